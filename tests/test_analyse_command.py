"""`manage.py analyse` from a shell: imports, runs through the queues, prints figures."""

import json
import subprocess
import sys

import pytest

from experiments.models import Slide
from tests.conftest import BROKEN_SLIDE, CMU_SLIDE, REPO

pytestmark = pytest.mark.worker


def analyse(workers, *args):
    return subprocess.run([sys.executable, "manage.py", "analyse", *args], cwd=REPO, env=workers.env,
                          capture_output=True, text=True, timeout=300)


def test_analyse_waits_and_prints_json_and_does_not_duplicate_slides(workers, pipelines):
    result = analyse(workers, "--pipeline", "tissue-area", "--lab", "Hepatology", "--experiment", "Batch 7",
                     "--wait", "--json", str(CMU_SLIDE))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "succeeded"
    (slide,) = doc["slides"]
    assert slide["file"] == "cmu-1-small-region.svs" and slide["status"] == "succeeded"
    assert slide["error"] is None and 0.3 < slide["metrics"]["tissue_area_mm2"] < 1.2
    assert "100.0%" in result.stderr  # the progress bar reached the end

    again = analyse(workers, "--pipeline", "tissue-area", "--lab", "Hepatology", "--experiment", "Batch 7",
                    "--wait", "--json", str(CMU_SLIDE))
    assert again.returncode == 0
    assert json.loads(again.stdout)["slides"][0]["slide_id"] == slide["slide_id"]
    assert Slide.objects.filter(experiment__name="Batch 7").count() == 1


def test_analyse_table_output_and_failure_exit_status(workers, pipelines):
    result = analyse(workers, "--pipeline", "ihc-dab", "--param", "tile_size=256", "--wait",
                     str(CMU_SLIDE), str(BROKEN_SLIDE))
    assert result.returncode == 1  # one file could not be analysed
    lines = result.stdout.splitlines()
    assert any(line.startswith("file") and "h_score" in line for line in lines)
    assert any(line.startswith("broken.svs") and "invalid" in line for line in lines)
    assert "not a slide image Histo-IA can read" in result.stdout


def test_analyse_refuses_a_bad_parameter_with_its_bounds(workers, pipelines):
    result = analyse(workers, "--pipeline", "ihc-dab", "--param", "tile_size=5", str(CMU_SLIDE))
    assert result.returncode != 0
    assert "Tile size (px) must be at least 64" in result.stderr
    unknown = analyse(workers, "--pipeline", "no-such-pipeline", str(CMU_SLIDE))
    assert unknown.returncode != 0 and "Available:" in unknown.stderr


def test_analyse_without_a_stain_estimates_it_and_says_so(workers, pipelines):
    result = analyse(workers, "--pipeline", "ihc-dab", "--lab", "Skin", "--experiment", "H&E", "--wait", "--json",
                     str(CMU_SLIDE))
    assert result.returncode == 0, result.stderr
    (slide,) = json.loads(result.stdout)["slides"]
    # The shared slide is H&E: its second stain is eosin, so no DAB figure is reported at all.
    assert slide["metrics"]["stain_mismatch"] is True and slide["metrics"]["stain_second"] == "eosin"
    assert slide["metrics"]["dab_positive_fraction"] is None and slide["metrics"]["h_score"] is None
    assert slide["stain"].startswith("not declared, estimated from the slide (second stain eosin")


def test_analyse_with_a_declared_he_stain_refuses_ihc_dab(workers, pipelines):
    result = analyse(workers, "--pipeline", "ihc-dab", "--lab", "Skin", "--experiment", "H&E declared",
                     "--stain", "he", str(CMU_SLIDE))
    assert result.returncode != 0
    assert "declared H&E: it has no DAB to measure" in result.stderr
    assert Slide.objects.get(experiment__name="H&E declared").stain == "he"
