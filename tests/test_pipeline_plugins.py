"""Pipelines are plug-ins: a package that is registered but broken is shown as unavailable, with
its error, and every other pipeline keeps working.

A package is "installed" here by putting its distribution metadata (a .dist-info folder with its
entry points) and its module on sys.path, which is what pip does, minus the copying.
"""

import textwrap

import pytest
from django.urls import reverse

from predictions import pipelines
from predictions.catalogue import sync_pipelines
from predictions.models import Pipeline

BUILT_INS = {"tissue-area", "ihc-dab", "nuclei-density", "tissue-classifier"}


def _install(folder, package, entry_points: dict[str, str], modules: dict[str, str]):
    info = folder / f"{package.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[histoia.pipelines]\n{lines}")
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def lab_packages(tmp_path, monkeypatch):
    """Three lab packages: one whose import fails, one that breaks the contract, one that works."""
    _install(tmp_path, "lab-broken", {"lab-broken": "lab_broken:Method"},
             {"lab_broken": "import a_library_that_is_not_installed\n"})
    _install(tmp_path, "lab-not-a-pipeline", {"lab-not-a-pipeline": "lab_not_a_pipeline:Method"},
             {"lab_not_a_pipeline": "class Method:\n    name = 'lab-not-a-pipeline'\n"})
    _install(tmp_path, "lab-area", {"lab-area": "lab_area:LabArea"}, {"lab_area": """
        from predictions.pipelines import BasePipeline, Outcome

        class LabArea(BasePipeline):
            name = "lab-area"
            version = "1.10"
            title = "Lab area"
            description = "The tissue area, as the lab's own package computes it."

            @property
            def is_tiled(self):
                return False

            def aggregate(self, prepared, rows, params, model=None, detections=None):
                return Outcome(self.area_metrics(prepared.plan, self.mask_area_px0(prepared.plan, prepared.mask)))
        """})
    monkeypatch.syspath_prepend(str(tmp_path))
    pipelines.reload()
    yield tmp_path
    monkeypatch.undo()
    pipelines.reload()


def test_a_broken_package_is_reported_and_the_others_still_load(lab_packages):
    names = {name for name, _ in pipelines.installed()}
    assert BUILT_INS | {"lab-area"} <= names
    problems = {u.entry_point: u for u in pipelines.unavailable()}
    assert set(problems) == {"lab-broken", "lab-not-a-pipeline"}
    assert "a_library_that_is_not_installed" in problems["lab-broken"].error
    assert problems["lab-broken"].package == "lab-broken"
    assert "is not a BasePipeline" in problems["lab-not-a-pipeline"].error


@pytest.mark.django_db
def test_admin_shows_unavailable_pipelines_with_their_error(lab_packages, admin_client):
    sync_pipelines()
    assert Pipeline.objects.get(name="lab-area", version="1.10").installed
    page = admin_client.get(reverse("admin:predictions_pipeline_changelist")).content.decode()
    assert "Pipeline lab-broken (package lab-broken) is unavailable" in page
    assert "No module named" in page and "a_library_that_is_not_installed" in page
    assert "lab-area" in page


@pytest.mark.django_db
def test_a_package_that_goes_missing_leaves_its_rows_for_history(lab_packages, admin_client, monkeypatch):
    sync_pipelines()
    row = Pipeline.objects.get(name="lab-area")
    (lab_packages / "lab_area-0.1.dist-info" / "entry_points.txt").write_text("[histoia.pipelines]\n")
    pipelines.reload()
    sync_pipelines()
    row.refresh_from_db()
    assert not row.installed
    assert Pipeline.objects.filter(name__in=BUILT_INS, installed=True).count() == len(BUILT_INS)
    page = admin_client.get(reverse("admin:predictions_pipeline_changelist")).content.decode()
    assert "no: its code is no longer installed" in page


@pytest.mark.django_db
def test_the_new_prediction_page_says_which_pipelines_are_unavailable(lab_packages, alice_client, experiment):
    sync_pipelines()
    page = alice_client.get(reverse("predictions:new", args=[experiment.pk])).content.decode()
    assert "Pipeline <strong>lab-broken</strong> (package lab-broken) is unavailable" in page
    # The lab's working package is offered beside the built-ins, with what it reports.
    assert "Lab area (lab-area 1.10)" in page


@pytest.mark.django_db
def test_the_api_lists_each_pipelines_figures_with_units(alice_api, pipeline_rows):
    listed = {p["name"]: p for p in alice_api.get("/api/v1/pipelines/").json()["results"]}
    figures = {f["name"]: f for f in listed["ihc-dab"]["figures"]}
    assert figures["h_score"]["label"] == "H-score (0–300)"
    assert figures["tissue_area_mm2"]["unit"] == "mm²"
    assert {"name": "class_fraction_", "label": "<class> fraction", "prefix": True}.items() <= \
        listed["tissue-classifier"]["figures"][-1].items()


def test_no_built_in_pipeline_is_known_by_name_outside_its_own_package():
    """The platform asks a pipeline what it is; it never tests which one it is (tests, docs,
    migrations and the pipelines' own package excepted)."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    quoted = re.compile(r"""["'](%s)["']""" % "|".join(re.escape(n) for n in sorted(BUILT_INS)))
    found = []
    for folder in ("histoia", "experiments", "predictions", "templates"):
        for path in (repo / folder).rglob("*"):
            relative = path.relative_to(repo).as_posix()
            if path.suffix not in (".py", ".html", ".js") or "/migrations/" in relative \
                    or relative.startswith("predictions/pipelines/"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if quoted.search(line):
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []
