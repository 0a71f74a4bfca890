"""Where a user sees what the stain was taken to be: the prediction page and the API."""

from django.urls import reverse

from predictions.imaging.stain import StainEstimate
from tests.nuclei_runs import finished_run

ESTIMATE = StainEstimate([0.66, 0.71, 0.25], [0.07, 0.89, 0.44], "eosin", [240.0, 240.0, 240.0], "estimated", 5000,
                         {"dab_angle": 25.0}, "Second stain eosin, 25° from DAB.").to_json()


def mismatched_run(experiment):
    run = finished_run(experiment)
    run.metrics = {"dab_positive_fraction": None, "h_score": None, "stain_mismatch": True, "stain_second": "eosin",
                   "stain_dab_angle_deg": 25.0, "stain_estimate": "estimated"}
    run.stain_estimate = ESTIMATE
    run.save()
    return run


def test_page_says_the_stain_was_estimated_and_why_no_dab_figure(alice_client, experiment):
    run = mismatched_run(experiment)
    page = alice_client.get(reverse("predictions:detail", args=[run.prediction_id])).content.decode()
    assert f'data-stain-mismatch="{run.pk}"' in page
    assert "its second stain is not DAB (estimated eosin, 25° from DAB)" in page
    assert "not declared · estimated from the slide: second stain <strong>eosin</strong>" in page


def test_declared_stain_is_shown_and_no_warning_without_a_mismatch(alice_client, experiment):
    run = finished_run(experiment)
    run.declared_stain = "hdab"
    run.metrics = {"dab_positive_fraction": 0.1, "stain_mismatch": False}
    run.save()
    page = alice_client.get(reverse("predictions:detail", args=[run.prediction_id])).content.decode()
    assert "declared hematoxylin-DAB" in page and "data-stain-mismatch" not in page


def test_api_gives_each_slides_declared_and_estimated_stain(alice_api, experiment):
    run = mismatched_run(experiment)
    (data,) = alice_api.get(f"/api/v1/predictions/{run.prediction_id}/").json()["runs"]
    assert data["declared_stain"] == "" and data["stain_estimate"]["second_stain"] == "eosin"
    assert data["stain_estimate"]["angles"]["dab_angle"] == 25.0
