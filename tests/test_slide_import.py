"""Import from the lab's own folder on the share (SLIDE_IMPORT_ROOT/<lab folder>): copies the file
in; anything outside that folder (another lab's included) is refused and never listed."""

import os

import pytest
from django.urls import reverse

from experiments.models import Slide
from experiments.uploads import ImportPathError, resolve_import_path
from tests.conftest import CMU_SLIDE, wait_for


@pytest.fixture
def lab_share(share, tmp_path):
    other = share.parent / "pathology-b"      # lab B's folder, beside lab A's
    other.mkdir()
    (other / "their-case.svs").write_bytes(CMU_SLIDE.read_bytes())
    (share / "liver").mkdir()
    (share / "liver" / "case-01.svs").write_bytes(CMU_SLIDE.read_bytes())
    secret = tmp_path / "secret.svs"
    secret.write_bytes(b"outside the share")
    (share / "escape.svs").symlink_to(secret)
    (share / "escape-dir").symlink_to(tmp_path)
    return share


@pytest.mark.parametrize("path", [
    "../secret.svs", "liver/../../secret.svs", "/etc/passwd", "escape.svs", "escape-dir/secret.svs",
    "../pathology-b/their-case.svs",
])
def test_paths_outside_the_root_are_refused(lab_share, lab_a, path):
    with pytest.raises(ImportPathError, match="outside the lab's import folder"):
        resolve_import_path(path, lab_a)


def test_refused_path_creates_nothing_and_says_why(lab_share, alice_client, experiment):
    response = alice_client.post(reverse("experiments:import", args=[experiment.pk]),
                                 {"paths": ["escape.svs"]}, follow=True)
    assert "outside the lab&#x27;s import folder" in response.content.decode()
    assert not Slide.objects.exists()


def test_browser_lists_slides_but_not_links_that_escape(lab_share, alice_client, experiment):
    page = alice_client.get(reverse("experiments:import", args=[experiment.pk]) + "?folder=liver").content.decode()
    assert "case-01.svs" in page
    root_page = alice_client.get(reverse("experiments:import", args=[experiment.pk])).content.decode()
    assert "escape.svs" not in root_page and "escape-dir" not in root_page
    outside = alice_client.get(reverse("experiments:import", args=[experiment.pk]) + "?folder=../")
    assert outside.status_code == 400


@pytest.mark.worker
def test_imported_slide_is_copied_in_and_becomes_ready(lab_share, workers, alice_client, experiment):
    alice_client.post(reverse("experiments:import", args=[experiment.pk]), {"paths": ["liver/case-01.svs"]})
    slide = wait_for(lambda: Slide.objects.exclude(status="pending").first(), timeout=60, message="import")
    assert slide.status == Slide.Status.READY, slide.error
    assert slide.import_path == "liver/case-01.svs"
    assert slide.width == 2220
    assert os.path.exists(slide.file.path)
    assert not os.path.samefile(slide.file.path, lab_share / "liver" / "case-01.svs")


def test_an_unreadable_path_is_refused_with_a_message(lab_share, alice_client, experiment):
    response = alice_client.post(reverse("experiments:import", args=[experiment.pk]),
                                 {"paths": ["liver/" + "x" * 300 + ".svs"]}, follow=True)
    assert response.status_code == 200
    assert "does not exist in the import folder" in response.content.decode()
    assert not Slide.objects.exists()


def test_a_lab_lists_and_imports_only_from_its_own_folder(lab_share, alice_client, bob_client, bob, experiment):
    from tests.factories import ExperimentFactory

    page = alice_client.get(reverse("experiments:import", args=[experiment.pk])).content.decode()
    assert "liver" in page and "their-case.svs" not in page and "pathology-b" not in page
    assert alice_client.get(reverse("experiments:import", args=[experiment.pk]) + "?folder=../pathology-b"
                            ).status_code == 400
    # Bob's lab sees its own folder, not alice's.
    bobs = ExperimentFactory(lab=bob.labs.get(), created_by=bob)
    page = bob_client.get(reverse("experiments:import", args=[bobs.pk])).content.decode()
    assert "their-case.svs" in page and "liver" not in page


def test_a_lab_without_its_folder_is_told_to_ask_an_admin(share, settings, alice_client, experiment):
    lab = experiment.lab
    lab.import_folder = "not/created/yet"
    lab.save()
    response = alice_client.get(reverse("experiments:import", args=[experiment.pk]))
    assert response.status_code == 400
    assert "does not exist on the share yet; ask an admin" in response.content.decode()


def test_an_admin_sets_a_lab_folder_inside_the_share_only(lab_a):
    from django.core.exceptions import ValidationError

    lab_a.import_folder = "pathology/liver"
    lab_a.full_clean()
    for bad in ("../elsewhere", "pathology/../../etc", "a//b"):
        lab_a.import_folder = bad
        with pytest.raises(ValidationError):
            lab_a.full_clean()
