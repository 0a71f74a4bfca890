"""Bad input: each gets a clear message where the user sees it, no 500, the worker survives and
other work goes on. (broken.svs, empty and text-as-.svs files: tests/test_slide_upload.py;
hostile names and the size limit: tests/test_upload_limits.py; import escapes:
tests/test_slide_import.py.)"""

import pytest
from django.urls import reverse

from experiments.models import Slide
from predictions import engine
from predictions.models import Status
from tests import bad_files
from tests.conftest import CMU_SLIDE, wait_final, wait_for

pytestmark = pytest.mark.worker


def upload(client, experiment, path):
    with open(path, "rb") as fh:
        response = client.post(reverse("experiments:upload", args=[experiment.pk]), {"files": fh}, follow=True)
    assert response.status_code == 200
    return wait_for(lambda: Slide.objects.filter(original_name=path.name).exclude(status="pending").first(),
                    timeout=60, message=f"{path.name} checked")


@pytest.mark.parametrize("make, message", [
    (bad_files.png_named_tiff, "is a PNG image but its name ends in “.tiff”"),
    (bad_files.truncated_slide, "damaged or missing: it may be truncated"),
    (bad_files.huge_declared_tiff, "declares 1,000,000 x 1,000,000 pixels"),
], ids=["png-renamed-tiff", "truncated-svs", "huge-declared-tiff"])
def test_bad_file_is_invalid_with_a_message_while_other_work_finishes(
        workers, alice_client, experiment, pipelines, make_slide, tmp_path, make, message):
    good = make_slide(CMU_SLIDE, "good.svs")
    running = engine.submit(experiment, pipelines["nuclei-density"], [good], {"tile_size": 256})

    slide = upload(alice_client, experiment, make(tmp_path))
    assert slide.status == Slide.Status.INVALID
    assert message in slide.error
    page = alice_client.get(experiment.get_absolute_url())
    assert page.status_code == 200 and message.split("“")[0] in page.content.decode()

    assert wait_final(running).status == Status.SUCCEEDED  # others' work went on
    # The worker survived: it still checks the next upload.
    assert upload(alice_client, experiment, CMU_SLIDE).status == Slide.Status.READY


def test_a_slide_with_no_tissue_gives_zero_and_says_so(workers, alice_client, experiment, pipelines, make_slide, tmp_path):
    blank = make_slide(bad_files.blank_slide(tmp_path))
    assert blank.status == Slide.Status.READY and blank.mpp is None
    for name in ("tissue-area", "ihc-dab", "nuclei-density"):
        prediction = wait_final(engine.submit(experiment, pipelines[name], [blank]))
        assert prediction.status == Status.SUCCEEDED, prediction.error
        metrics = prediction.runs.get().metrics
        assert metrics["tissue_area_px"] == 0 and metrics["mpp_missing"] is True
        assert metrics["tissue_area_mm2"] is None
        page = alice_client.get(prediction.get_absolute_url()).content.decode()
        assert "No tissue was found on this slide" in page


def test_out_of_bounds_and_wrong_type_parameters_are_refused_on_the_page(alice_client, experiment, pipelines, make_slide):
    slide = make_slide(CMU_SLIDE)
    url = reverse("predictions:new", args=[experiment.pk])
    pipeline = pipelines["ihc-dab"]
    for value, message in (("5", "must be at least 64"), ("big", "must be a whole number"), ("1e9", "must be a whole number")):
        response = alice_client.post(url, {"pipeline": pipeline.pk, "slides": [slide.pk], "priority": "normal",
                                           "param_tile_size": value, "submit": "1"})
        assert response.status_code == 200 and message in response.content.decode()
    response = alice_client.post(url, {"pipeline": pipeline.pk, "slides": [slide.pk], "priority": "normal",
                                       "param_weak": "0.5", "param_moderate": "0.1", "submit": "1"})
    assert "thresholds must go up" in response.content.decode()
    assert not experiment.predictions.exists()
