"""Upload → validation on a real cpu worker → ready (or invalid, with a message a user reads)."""

import hashlib

import pytest
from django.urls import reverse

from experiments.models import Slide
from tests.conftest import BROKEN_SLIDE, CMU_SLIDE, wait_for

pytestmark = pytest.mark.worker


def upload(client, experiment, path):
    with open(path, "rb") as fh:
        return client.post(reverse("experiments:upload", args=[experiment.pk]), {"files": fh}, follow=True)


def settled(slide_name):
    def check():
        slide = Slide.objects.filter(original_name=slide_name).first()
        return slide if slide and slide.status != Slide.Status.PENDING else None
    return check


def test_uploaded_slide_becomes_ready_with_metadata_and_thumbnail(workers, alice_client, experiment):
    response = upload(alice_client, experiment, CMU_SLIDE)
    assert response.status_code == 200
    assert "is now being checked" in response.content.decode()

    slide = wait_for(settled("cmu-1-small-region.svs"), timeout=60, message="slide validation")
    assert slide.status == Slide.Status.READY, slide.error
    assert (slide.width, slide.height) == (2220, 2967)
    assert slide.mpp == pytest.approx(0.499)
    assert slide.objective_power == 20
    assert slide.vendor == "aperio"
    assert slide.level_count == 1
    assert slide.sha256 == hashlib.sha256(CMU_SLIDE.read_bytes()).hexdigest()
    assert slide.size_bytes == CMU_SLIDE.stat().st_size

    thumb = alice_client.get(reverse("experiments:thumbnail", args=[slide.pk]))
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/png"
    png = b"".join(thumb.streaming_content)
    assert png.startswith(b"\x89PNG")

    page = alice_client.get(experiment.get_absolute_url()).content.decode()
    assert "2220 × 2967" in page and "Ready" in page


@pytest.mark.parametrize("make_file, expected", [
    (lambda tmp: BROKEN_SLIDE, "not a slide image Histo-IA can read"),
    (lambda tmp: _write(tmp / "empty.svs", b""), "The file is empty"),
    (lambda tmp: _write(tmp / "notes.svs", b"Sample 14, liver, H&E\n" * 20), "not a slide image Histo-IA can read"),
], ids=["broken.svs", "empty", "text-named-svs"])
def test_bad_files_become_invalid_with_a_clear_message(workers, alice_client, experiment, tmp_path, make_file, expected):
    path = make_file(tmp_path)
    upload(alice_client, experiment, path)
    slide = wait_for(settled(path.name), timeout=60, message="slide validation")
    assert slide.status == Slide.Status.INVALID
    assert expected in slide.error
    page = alice_client.get(experiment.get_absolute_url()).content.decode()
    assert "Invalid" in page and expected in page


def _write(path, data):
    path.write_bytes(data)
    return path
