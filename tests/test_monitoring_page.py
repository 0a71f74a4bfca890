"""The staff monitoring page: workers per queue from the real workers; staff only."""

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from predictions.models import Prediction, Status


@pytest.mark.worker
def test_staff_see_each_queue_with_its_worker_and_recent_failures(workers, client, admin_user, experiment, pipelines):
    cache.clear()
    Prediction.objects.create(experiment=experiment, pipeline=pipelines["ihc-dab"], status=Status.FAILED,
                              error="Every slide failed; see each slide's reason.",
                              finished_at=timezone.now())
    client.force_login(admin_user)
    page = client.get(reverse("predictions:monitoring")).content.decode()
    assert workers.cpu_name in page and workers.gpu_name in page
    assert 'data-queue="cpu"' in page and 'data-queue="gpu"' in page
    assert "No worker answers" not in page
    assert "Every slide failed" in page


def test_lab_members_do_not_see_the_monitoring_page(alice_client):
    assert alice_client.get(reverse("predictions:monitoring")).status_code == 404
