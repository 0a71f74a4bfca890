"""Declaring the stain: on the experiment (page, API, admin) and per slide (page, API), scoped to
the user's labs, with a clear 400 for a stain Histo-IA does not know."""

from rest_framework.test import APIClient

from experiments.models import Experiment, Stain
from tests.conftest import csrf_checking_client, token_client
from tests.factories import SlideFactory

API = "/api/v1"


# -- the model ---------------------------------------------------------------------------------------
def test_effective_stain_is_the_slides_own_else_the_experiments(experiment, slide):
    assert slide.effective_stain == "" and experiment.stain == Stain.UNKNOWN
    experiment.stain = Stain.HE
    experiment.save()
    slide.refresh_from_db()
    assert slide.effective_stain == "he"
    slide.stain = Stain.HDAB
    slide.save()
    slide.refresh_from_db()
    assert slide.effective_stain == "hdab"
    slide.stain = ""
    assert slide.effective_stain == "he"


# -- pages --------------------------------------------------------------------------------------------
def test_new_experiment_form_offers_the_stain_undeclared_by_default(alice_client, lab_a):
    page = alice_client.get("/experiments/new/").content.decode()
    assert 'name="stain"' in page
    assert '<option value="" selected>Not declared (estimated from each slide)</option>' in page
    assert "H&amp;E" in page and "IHC: hematoxylin and DAB" in page

    response = alice_client.post("/experiments/new/", {"lab": lab_a.pk, "name": "Ki-67 batch", "stain": "hdab"})
    created = Experiment.objects.get(name="Ki-67 batch")
    assert response.status_code == 302 and response["Location"] == f"/experiments/{created.pk}/"
    assert created.stain == "hdab"
    detail = alice_client.get(f"/experiments/{created.pk}/").content.decode()
    assert "<strong>Stain:</strong> IHC: hematoxylin and DAB" in detail

    undeclared = alice_client.post("/experiments/new/", {"lab": lab_a.pk, "name": "Plain"})
    assert undeclared.status_code == 302 and Experiment.objects.get(name="Plain").stain == ""
    assert "not declared" in alice_client.get(undeclared["Location"]).content.decode()


def test_edit_an_experiment_sets_its_stain_and_keeps_its_lab(alice_client, alice, experiment, lab_b):
    page = alice_client.get(f"/experiments/{experiment.pk}/edit/")
    assert page.status_code == 200 and 'name="stain"' in page.content.decode()
    response = alice_client.post(f"/experiments/{experiment.pk}/edit/", {
        "lab": lab_b.pk, "name": "Liver fibrosis", "description": "Sirius red", "stain": "he"})
    assert response.status_code == 302
    experiment.refresh_from_db()
    assert experiment.stain == "he" and experiment.description == "Sirius red"
    assert experiment.lab.name == "Pathology A"  # the lab field is disabled on edit

    bad = alice_client.post(f"/experiments/{experiment.pk}/edit/", {"name": "Liver fibrosis", "stain": "gram"})
    assert bad.status_code == 200 and "Select a valid choice" in bad.content.decode()
    experiment.refresh_from_db()
    assert experiment.stain == "he"


def test_another_labs_experiment_cannot_be_edited(bob_client, experiment):
    assert bob_client.get(f"/experiments/{experiment.pk}/edit/").status_code == 404
    assert bob_client.post(f"/experiments/{experiment.pk}/edit/", {"name": "x", "stain": "he"}).status_code == 404
    experiment.refresh_from_db()
    assert experiment.stain == "" and experiment.name == "Liver fibrosis"


def test_slide_list_shows_the_effective_stain_and_a_form_to_override_it(alice_client, experiment, slide):
    experiment.stain = Stain.HE
    experiment.save()
    other = SlideFactory(experiment=experiment, original_name="case-02.svs", stain=Stain.HDAB)
    table = alice_client.get(f"/experiments/{experiment.pk}/slides/").content.decode()
    assert 'data-effective-stain="he">H&amp;E (hematoxylin and eosin) <span class="muted small">(experiment' in table
    assert 'data-effective-stain="hdab">IHC: hematoxylin and DAB' in table
    assert f'action="/experiments/slides/{slide.pk}/stain/"' in table
    assert f'action="/experiments/slides/{other.pk}/stain/"' in table
    assert "As the experiment (H&amp;E (hematoxylin and eosin))" in table


def test_slide_override_on_the_page(alice_client, experiment, slide):
    response = alice_client.post(f"/experiments/slides/{slide.pk}/stain/", {"stain": "hdab"}, follow=True)
    assert response.redirect_chain[-1][0] == f"/experiments/{experiment.pk}/"
    assert "case-01.svs: stain IHC: hematoxylin and DAB." in response.content.decode()
    slide.refresh_from_db()
    assert slide.stain == "hdab" and slide.effective_stain == "hdab"

    # Back to the experiment's (empty value).
    alice_client.post(f"/experiments/slides/{slide.pk}/stain/", {"stain": ""})
    slide.refresh_from_db()
    assert slide.stain == "" and slide.effective_stain == ""

    bad = alice_client.post(f"/experiments/slides/{slide.pk}/stain/", {"stain": "gram"}, follow=True)
    assert "Select a valid choice" in bad.content.decode()
    slide.refresh_from_db()
    assert slide.stain == ""
    assert alice_client.get(f"/experiments/slides/{slide.pk}/stain/").status_code == 405


def test_slide_override_is_404_for_another_lab_and_needs_csrf(bob_client, alice, slide):
    assert bob_client.post(f"/experiments/slides/{slide.pk}/stain/", {"stain": "he"}).status_code == 404
    strict = csrf_checking_client(alice)
    assert strict.post(f"/experiments/slides/{slide.pk}/stain/", {"stain": "he"}).status_code == 403
    slide.refresh_from_db()
    assert slide.stain == ""


# -- API ----------------------------------------------------------------------------------------------
def test_api_experiment_stain_on_create_and_update(alice, lab_a):
    client = token_client(alice)
    created = client.post(f"{API}/experiments/", {"name": "IHC", "stain": "hdab"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["stain"] == "hdab"
    plain = client.post(f"{API}/experiments/", {"name": "Plain"}, format="json").json()
    assert plain["stain"] == ""

    url = f"{API}/experiments/{plain['id']}/"
    updated = client.patch(url, {"stain": "he"}, format="json")
    assert updated.status_code == 200 and updated.json()["stain"] == "he"
    assert Experiment.objects.get(pk=plain["id"]).stain == "he"

    bad = client.patch(url, {"stain": "H&E"}, format="json")
    assert bad.status_code == 400
    message = bad.json()["stain"][0]
    assert message.startswith("“H&E” is not a stain Histo-IA knows.") and "“hdab”" in message
    assert client.post(f"{API}/experiments/", {"name": "X", "stain": "gram"}, format="json").status_code == 400
    assert Experiment.objects.get(pk=plain["id"]).stain == "he"


def test_api_slide_stain_patch_and_effective_stain(alice, experiment, slide):
    client = token_client(alice)
    url = f"{API}/slides/{slide.pk}/"
    body = client.get(url).json()
    assert body["stain"] == "" and body["effective_stain"] == ""

    experiment.stain = Stain.HE
    experiment.save()
    assert client.get(url).json()["effective_stain"] == "he"
    listed = client.get(f"{API}/experiments/{experiment.pk}/slides/").json()["results"]
    assert [(s["stain"], s["effective_stain"]) for s in listed] == [("", "he")]

    # Only the stain changes; other fields in the body are read-only and ignored.
    patched = client.patch(url, {"stain": "hdab", "original_name": "renamed.svs", "effective_stain": "other"},
                           format="json")
    assert patched.status_code == 200, patched.content
    assert patched.json()["stain"] == "hdab" and patched.json()["effective_stain"] == "hdab"
    slide.refresh_from_db()
    assert slide.stain == "hdab" and slide.original_name == "case-01.svs"

    bad = client.patch(url, {"stain": "gram"}, format="json")
    assert bad.status_code == 400 and "is not a stain Histo-IA knows" in bad.json()["stain"][0]
    assert client.put(url, {"stain": "he"}, format="json").status_code == 405
    assert client.delete(url).status_code == 403   # deleting is for lab managers (tests/test_roles.py)

    cleared = client.patch(url, {"stain": ""}, format="json").json()
    assert cleared["stain"] == "" and cleared["effective_stain"] == "he"


def test_api_slide_stain_of_another_lab_is_404(bob, slide):
    client = token_client(bob)
    assert client.patch(f"{API}/slides/{slide.pk}/", {"stain": "he"}, format="json").status_code == 404
    slide.refresh_from_db()
    assert slide.stain == ""


# -- admin --------------------------------------------------------------------------------------------
def test_admin_lists_filters_and_edits_the_stain(admin_client, experiment, slide):
    experiment.stain = Stain.HDAB
    experiment.save()
    listing = admin_client.get("/admin/experiments/experiment/?stain=hdab").content.decode()
    assert "Liver fibrosis" in listing and "IHC: hematoxylin and DAB" in listing
    assert "Liver fibrosis" not in admin_client.get("/admin/experiments/experiment/?stain=he").content.decode()
    change = admin_client.get(f"/admin/experiments/experiment/{experiment.pk}/change/").content.decode()
    assert 'name="stain"' in change and 'name="slides-0-stain"' in change
    slides = admin_client.get("/admin/experiments/slide/?experiment__stain=hdab").content.decode()
    assert "case-01.svs" in slides
    assert 'name="stain"' in admin_client.get(f"/admin/experiments/slide/{slide.pk}/change/").content.decode()


def test_stain_pages_need_a_login(client, slide, experiment):
    for response in (client.get(f"/experiments/{experiment.pk}/edit/"),
                     client.post(f"/experiments/slides/{slide.pk}/stain/", {"stain": "he"})):
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert APIClient().patch(f"{API}/slides/{slide.pk}/", {"stain": "he"}, format="json").status_code == 401
    slide.refresh_from_db()
    assert slide.stain == ""
