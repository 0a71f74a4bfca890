"""Upload bounds and hostile names, checked in the web process (no worker involved)."""

from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from experiments.models import Slide
from experiments.uploads import clean_file_name, display_name
from tests.conftest import CMU_SLIDE


def test_upload_over_the_size_limit_is_refused_with_a_message(alice_client, experiment, settings, django_capture_on_commit_callbacks):
    settings.SLIDE_UPLOAD_MAX_BYTES = 100_000
    with open(CMU_SLIDE, "rb") as fh, django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post(reverse("experiments:upload", args=[experiment.pk]), {"files": fh}, follow=True)
    assert "larger than the upload limit" in response.content.decode()
    assert not Slide.objects.exists()
    assert callbacks == []


def test_hostile_file_names_are_cleaned(alice_client, experiment, django_capture_on_commit_callbacks, tmp_path):
    hostile = "../../etc/" + "a" * 300 + "\x07\x1b[31m.svs"
    with django_capture_on_commit_callbacks(execute=False):
        alice_client.post(reverse("experiments:upload", args=[experiment.pk]),
                          {"files": SimpleUploadedFile(hostile, b"not really a slide")})
    slide = Slide.objects.get()
    assert ".." not in slide.file.name and "\x1b" not in slide.file.name
    assert slide.file.name.startswith(f"slides/lab-{experiment.lab_id}/")
    assert slide.file.name.endswith(".svs") and len(slide.file.name) < 300
    assert "\x07" not in slide.original_name and "/" not in slide.original_name


def test_clean_file_name_keeps_the_extension_and_drops_folders():
    assert clean_file_name("../../secret/slide 1.svs") == "slide 1.svs"
    assert clean_file_name("a" * 500 + ".ndpi").endswith(".ndpi")
    assert len(clean_file_name("a" * 500 + ".ndpi")) == 120
    assert clean_file_name("..") == "slide"
    assert display_name("C:\\scans\\tumour\x00.svs") == "tumour.svs"


def test_upload_without_a_file_says_so(alice_client, experiment):
    response = alice_client.post(reverse("experiments:upload", args=[experiment.pk]), {}, follow=True)
    assert "Choose at least one slide file" in response.content.decode()
