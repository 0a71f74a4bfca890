"""The current version of a pipeline is picked as versions compare, not as text sorts: 1.10 is
newer than 1.9 for new work (Pipeline.objects.current, used by the pages, the API, the analyse
command and the schedules) and in every list of versions, pages and API alike."""

import pytest

from predictions.models import Pipeline
from predictions.versions import version_key
from tests.conftest import token_client

API = "/api/v1"


def add_version(name, version, **fields):
    """A row for a version whose code is not on this machine: only picked and listed here."""
    return Pipeline.objects.create(name=name, version=version, title=f"{name} {version}", batch_queue="cpu",
                                   **fields)


def test_versions_compare_as_versions():
    assert version_key("1.10") > version_key("1.9") > version_key("1.0") > version_key("0.9")
    assert version_key("2.1rc1") < version_key("2.1") < version_key("2.1.post1") < version_key("2.10")
    assert version_key("2") == version_key("2.0")


def test_a_version_that_is_no_version_number_sorts_below_every_version_number():
    assert version_key("beta") < version_key("0.0.1")
    assert version_key("nightly") > version_key("beta")   # between two such versions: text order


def test_1_10_is_current_over_1_9(pipeline_rows):
    installed = pipeline_rows["ihc-dab"]
    add_version("ihc-dab", "1.9")
    add_version("ihc-dab", "11.9")
    newest = add_version("ihc-dab", "11.10")
    assert Pipeline.objects.current("ihc-dab") == newest
    # Lists show each name's versions newest first, as versions.
    versions = [p.version for p in Pipeline.objects.filter(name="ihc-dab")]
    assert versions == ["11.10", "11.9", installed.version, "1.9"]
    # A disabled version is never current; nor is one whose code is gone.
    Pipeline.objects.filter(pk=newest.pk).update(enabled=False)
    assert Pipeline.objects.current("ihc-dab").version == "11.9"
    Pipeline.objects.filter(version="11.9").update(installed=False)
    assert Pipeline.objects.current("ihc-dab") == installed
    assert Pipeline.objects.current("no-such-pipeline") is None


def test_an_unparsable_version_is_never_current_over_a_version_number(pipeline_rows):
    installed = pipeline_rows["tissue-area"]
    add_version("tissue-area", "zz-latest")
    assert Pipeline.objects.current("tissue-area") == installed
    assert [p.version for p in Pipeline.objects.filter(name="tissue-area")] == [installed.version, "zz-latest"]
    # With no version number left enabled, the text order decides between the others.
    Pipeline.objects.filter(pk=installed.pk).update(enabled=False)
    add_version("tissue-area", "aa-oldest")
    assert Pipeline.objects.current("tissue-area").version == "zz-latest"


def test_the_api_lists_versions_newest_first_and_marks_the_current_one(pipeline_rows, alice):
    installed = pipeline_rows["nuclei-density"]
    add_version("nuclei-density", "11.9")
    add_version("nuclei-density", "11.10")
    listed = [p for p in token_client(alice).get(f"{API}/pipelines/", {"name": "nuclei-density"}).json()["results"]
              if p["name"] == "nuclei-density"]
    assert [(p["version"], p["current"]) for p in listed] == [
        ("11.10", True), ("11.9", False), (installed.version, False)]


@pytest.mark.django_db
def test_versions_are_numbered_again_when_one_comes_between_others():
    old, new = add_version("x-demo", "1.2"), add_version("x-demo", "1.10")
    middle = add_version("x-demo", "1.9")
    assert middle.version_order == 1
    assert [p.version for p in Pipeline.objects.filter(name="x-demo")] == ["1.10", "1.9", "1.2"]
    assert {p.pk: p.version_order for p in Pipeline.objects.filter(name="x-demo")} == {old.pk: 0, middle.pk: 1,
                                                                                       new.pk: 2}
