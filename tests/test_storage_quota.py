"""Each lab's storage use shows on its pages and in the admin; past its quota, uploads and imports
are refused with what to do (the API: 400) and nothing is stored."""

import pytest
from django.urls import reverse

from experiments.models import Slide
from tests.conftest import CMU_SLIDE, token_client
from tests.factories import MemberFactory

API = "/api/v1"
GB = 1024 ** 3
pytestmark = pytest.mark.django_db


@pytest.fixture
def nearly_full(lab_a, experiment):
    """Lab A with a 1 GB quota and 1 GB less 1 MB of slides already stored."""
    lab_a.storage_quota_gb = 1
    lab_a.save()
    Slide.objects.create(experiment=experiment, original_name="big-scan.svs", status=Slide.Status.READY,
                         size_bytes=GB - 1024 ** 2)
    return lab_a


def test_storage_use_shows_on_the_lab_pages(settings, alice_client, experiment, nearly_full):
    # Sizes are written as filesizeformat writes them, with a no-break space before the unit.
    detail = alice_client.get(experiment.get_absolute_url()).content.decode().replace("\xa0", " ")
    assert "Pathology A stores 1023.0 MB of slide files, of its 1.0 GB quota (100 %)" in detail
    assert "nearly full" in detail
    listing = alice_client.get(reverse("experiments:list")).content.decode().replace("\xa0", " ")
    assert "Pathology A stores 1023.0 MB" in listing

    nearly_full.storage_quota_gb = None          # back to the server's default
    nearly_full.save()
    settings.HISTOIA_LAB_STORAGE_QUOTA_GB = 0
    assert "(no quota)" in alice_client.get(experiment.get_absolute_url()).content.decode()


def test_an_upload_past_the_quota_is_refused_and_nothing_is_stored(alice, alice_client, experiment, nearly_full):
    before = Slide.objects.count()
    with open(CMU_SLIDE, "rb") as fh:
        answer = token_client(alice).post(f"{API}/experiments/{experiment.pk}/slides/", {"files": fh},
                                          format="multipart")
    assert answer.status_code == 400
    message = answer.json()["files"][0]
    assert "Nothing was stored: Pathology A stores 1023.0 MB of its 1.0 GB quota" in message
    assert "A lab manager can delete slides" in message
    with open(CMU_SLIDE, "rb") as fh:
        page = alice_client.post(reverse("experiments:upload", args=[experiment.pk]), {"files": fh}, follow=True)
    assert "Nothing was stored: Pathology A stores" in page.content.decode()
    assert Slide.objects.count() == before

    # Another lab is not held back by lab A's use.
    other = MemberFactory(username="erin")
    from tests.factories import ExperimentFactory, LabFactory
    lab_c = LabFactory(name="Pathology C")
    lab_c.members.add(other)
    elsewhere = ExperimentFactory(lab=lab_c, created_by=other)
    with open(CMU_SLIDE, "rb") as fh:
        assert token_client(other).post(f"{API}/experiments/{elsewhere.pk}/slides/", {"files": fh},
                                        format="multipart").status_code == 201

    # Freeing space lets the upload in.
    Slide.objects.filter(original_name="big-scan.svs").update(status=Slide.Status.DELETED)
    with open(CMU_SLIDE, "rb") as fh:
        assert token_client(alice).post(f"{API}/experiments/{experiment.pk}/slides/", {"files": fh},
                                        format="multipart").status_code == 201


def test_an_import_past_the_quota_is_refused(alice_api, experiment, nearly_full, share):
    (share / "case.svs").write_bytes(CMU_SLIDE.read_bytes())
    answer = alice_api.post(f"{API}/experiments/{experiment.pk}/slides/import/", {"paths": ["case.svs"]},
                            format="json")
    assert answer.status_code == 400 and "of its 1.0 GB quota" in answer.json()["paths"][0]
    assert not Slide.objects.filter(original_name="case.svs").exists()


def test_the_admin_shows_each_labs_storage_and_managers(admin_client, nearly_full, alice):
    listing = admin_client.get(reverse("admin:experiments_lab_changelist")).content.decode().replace("\xa0", " ")
    assert "1023.0 MB of 1.0 GB (100 %)" in listing
    form = admin_client.get(reverse("admin:experiments_lab_change", args=[nearly_full.pk])).content.decode()
    assert 'name="managers"' in form and 'name="storage_quota_gb"' in form
    # A manager chosen in the admin becomes a member too.
    outsider = MemberFactory(username="frank")
    nearly_full.members.remove(outsider)
    answer = admin_client.post(reverse("admin:experiments_lab_change", args=[nearly_full.pk]), {
        "name": nearly_full.name, "members": [alice.pk], "managers": [outsider.pk], "storage_quota_gb": 2,
        "import_folder": ""})
    assert answer.status_code == 302
    nearly_full.refresh_from_db()
    assert nearly_full.managers.filter(pk=outsider.pk).exists() and nearly_full.members.filter(pk=outsider.pk).exists()
    assert nearly_full.storage_quota_gb == 2
