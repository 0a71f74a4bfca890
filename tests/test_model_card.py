"""The model card: what a registered model was trained on, what its classes mean, how it was
validated and whether it is for diagnosis, shown in the API, on the run-a-pipeline page, in every
prediction's provenance and in the admin; the shipped demo model's card says what it is."""

import json

import pytest

from predictions.catalogue import DEMO_MODEL_DIR, register_demo_model
from predictions.models import Prediction, RegisteredModel, Status
from tests.factories import PredictionFactory, SlideRunFactory

API = "/api/v1"
BADGE = "Demo — not for diagnosis"
CARD_KEYS = {"name", "version", "sha256", "description", "trained_on", "classes", "mpp", "tile_size", "mean",
             "std", "stain_normalisation", "validation", "not_for_diagnosis"}


@pytest.fixture
def demo(db):
    return register_demo_model()


def classifier_prediction(experiment, pipeline, model):
    prediction = PredictionFactory(experiment=experiment, pipeline=pipeline, model=model, status=Status.SUCCEEDED,
                                   total_units=2, done_units=2)
    SlideRunFactory(prediction=prediction, slide__original_name="cmu.svs",
                    metrics={"class_fraction_background": 0.5, "class_fraction_stroma": 0.2,
                             "class_fraction_cellular": 0.3})
    return prediction


# -- the demo model's card ----------------------------------------------------------------------------
def test_register_demo_model_fills_the_card(demo):
    meta = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
    assert demo.sha256 == meta["sha256"]   # the shipped file, unchanged
    assert demo.not_for_diagnosis is True
    assert demo.description.startswith("Demonstration of the model path — not histology, not for diagnosis")
    assert "cmu-1-small-region.svs" in demo.trained_on and "H&E" in demo.trained_on
    assert demo.label_meanings["background"].startswith("mostly glass")
    assert demo.label_meanings["stroma"].startswith("tissue with few nuclei per area")
    assert demo.label_meanings["cellular"].startswith("tissue with many nuclei per area")
    assert demo.stain_normalisation == "none (expects H&E as scanned)"
    assert demo.validation.startswith("Agreement with the rule-based labeller on held-out tiles of the same slide")
    assert "No histological validation" in demo.validation
    card = demo.card()
    assert set(card) == CARD_KEYS
    assert [c["name"] for c in card["classes"]] == ["background", "stroma", "cellular"]
    assert all(c["meaning"] for c in card["classes"])


def test_register_demo_model_updates_the_card_of_an_existing_row(demo):
    # A row registered before the card existed: README text as description, no card fields.
    RegisteredModel.objects.filter(pk=demo.pk).update(
        description="# tissue-classifier-demo (version 1)\n\nA tiny CNN…", trained_on="", label_meanings={},
        stain_normalisation="", validation="", not_for_diagnosis=False, enabled=False)
    again = register_demo_model()
    assert again.pk == demo.pk and RegisteredModel.objects.count() == 1
    again.refresh_from_db()
    assert again.not_for_diagnosis is True and again.card() == demo.card()
    assert again.sha256 == demo.sha256 and again.file.name == demo.file.name
    assert again.enabled is False   # the admin's choice is kept; only the card is brought up to date


# -- API --------------------------------------------------------------------------------------------
def test_api_models_and_pipelines_show_the_card(pipeline_rows, demo, alice_api):
    models = alice_api.get(f"{API}/models/").json()["results"]
    assert len(models) == 1
    listed = models[0]
    assert CARD_KEYS <= set(listed)
    assert {k: listed[k] for k in CARD_KEYS} == demo.card()
    assert listed["not_for_diagnosis"] is True
    assert listed["classes"][0] == {"name": "background", "meaning": demo.label_meanings["background"]}
    assert listed["label_meanings"] == demo.label_meanings and listed["class_names"] == demo.class_names

    classifier = alice_api.get(f"{API}/pipelines/{pipeline_rows['tissue-classifier'].pk}/").json()
    assert {k: classifier["model"][k] for k in CARD_KEYS} == demo.card()
    assert classifier["model"]["id"] == demo.pk
    assert alice_api.get(f"{API}/pipelines/{pipeline_rows['ihc-dab'].pk}/").json()["model"] is None


def test_api_prediction_detail_has_the_card_in_its_provenance(pipeline_rows, demo, alice_api, experiment):
    prediction = classifier_prediction(experiment, pipeline_rows["tissue-classifier"], demo)
    body = alice_api.get(f"{API}/predictions/{prediction.pk}/").json()
    card = body["provenance"]["model_card"]
    assert card == demo.card() and card["not_for_diagnosis"] is True
    assert body["provenance"]["model_sha256"] == demo.sha256
    results = alice_api.get(f"{API}/predictions/{prediction.pk}/results/").json()
    assert results["provenance"]["model_card"]["validation"] == demo.validation


# -- pages --------------------------------------------------------------------------------------------
def new_prediction_page(client, experiment, pipeline):
    return client.get(f"/predictions/new/{experiment.pk}/?pipeline={pipeline.pk}")


def test_new_prediction_page_shows_the_card_and_the_demo_badge(pipeline_rows, demo, alice_client, experiment):
    page = new_prediction_page(alice_client, experiment, pipeline_rows["tissue-classifier"])
    html = page.content.decode()
    assert page.status_code == 200
    assert "Model card: tissue-classifier-demo" in html and "version 2" in html
    assert BADGE in html and "data-not-for-diagnosis" in html
    assert "cmu-1-small-region.svs" in html
    assert "<strong>stroma</strong>: tissue with few nuclei per area" in html
    assert "64 × 64 px tiles at 2.0 µm/px" in html
    assert "none (expects H&amp;E as scanned)" in html
    assert "no histological validation" in html.lower()

    # A research model marked for use: the card, no badge.
    RegisteredModel.objects.filter(pk=demo.pk).update(not_for_diagnosis=False)
    html = new_prediction_page(alice_client, experiment, pipeline_rows["tissue-classifier"]).content.decode()
    assert "Model card: tissue-classifier-demo" in html and BADGE not in html

    # A pipeline without a model shows no card.
    html = new_prediction_page(alice_client, experiment, pipeline_rows["ihc-dab"]).content.decode()
    assert "Model card" not in html and BADGE not in html


def test_new_prediction_page_says_when_no_model_is_registered(pipeline_rows, alice_client, experiment):
    html = new_prediction_page(alice_client, experiment, pipeline_rows["tissue-classifier"]).content.decode()
    assert "No enabled model “tissue-classifier-demo” is registered" in html


def test_prediction_page_shows_the_card_and_the_badge_by_the_figures(pipeline_rows, demo, alice_client, bob_client,
                                                                    experiment):
    prediction = classifier_prediction(experiment, pipeline_rows["tissue-classifier"], demo)
    html = alice_client.get(f"/predictions/{prediction.pk}/").content.decode()
    assert html.count(BADGE) == 2   # above the figures, and beside the model in the provenance
    assert html.index(BADGE) < html.index('<table class="table figures">')
    provenance = html[html.index("<h2>Provenance</h2>"):]
    assert "Model card" in provenance and "mostly glass" in provenance
    assert "none (expects H&amp;E as scanned)" in provenance and "No histological validation" in provenance
    assert "has changed since this prediction ran" not in provenance
    assert bob_client.get(f"/predictions/{prediction.pk}/").status_code == 404

    other = classifier_prediction(experiment, pipeline_rows["ihc-dab"], demo)
    Prediction.objects.filter(pk=other.pk).update(model=None, model_sha256="")
    html = alice_client.get(f"/predictions/{other.pk}/").content.decode()
    assert BADGE not in html and "Model card" not in html


# -- admin --------------------------------------------------------------------------------------------
def test_admin_groups_the_card_fields_and_checks_the_class_meanings(admin_client, demo):
    url = f"/admin/predictions/registeredmodel/{demo.pk}/change/"
    html = admin_client.get(url).content.decode()
    assert "<h2" in html and "Model card" in html
    card_part = html[html.index("Model card"):]
    for field in ("trained_on", "label_meanings", "stain_normalisation", "validation", "not_for_diagnosis"):
        assert f'name="{field}"' in card_part, field
    listing = admin_client.get("/admin/predictions/registeredmodel/?not_for_diagnosis__exact=1").content.decode()
    assert "tissue-classifier-demo" in listing

    data = {"name": demo.name, "version": demo.version, "tile_size": 64, "mpp": 2.0,
            "mean": json.dumps(demo.mean), "std": json.dumps(demo.std), "class_names": json.dumps(demo.class_names),
            "description": demo.description, "trained_on": "one slide", "stain_normalisation": "none",
            "validation": "none", "not_for_diagnosis": "on", "enabled": "on",
            "label_meanings": json.dumps({"tumour": "invasive carcinoma"})}
    refused = admin_client.post(url, data)
    assert refused.status_code == 200
    assert "Not classes of this model: tumour." in refused.content.decode()

    data["label_meanings"] = json.dumps({"stroma": "connective tissue"})
    saved = admin_client.post(url, data)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    demo.refresh_from_db()
    assert demo.label_meanings == {"stroma": "connective tissue"} and demo.trained_on == "one slide"
    assert demo.card()["classes"][1] == {"name": "stroma", "meaning": "connective tissue"}
