"""Malformed requests are the client's error (4xx) with a clear message, never a 500: ids that are
not numbers in query strings, JSON nested past what the decoder follows, bodies over the size
limit (a JSON 413 from the API, not the server's HTML error page)."""

import pytest
from django.conf import settings

from tests.conftest import token_client

API = "/api/v1"


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["a=8&b=abc", "a=abc&b=1", "a=&b=", "a=1&b=²", "a=1&b=99999999999999999999999",
                                   "b=1", ""])
def test_compare_with_an_id_that_is_not_a_number_is_not_found(alice_client, query):
    response = alice_client.get(f"/predictions/compare/?{query}")
    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/predictions/", "/experiments/", "/experiments/{exp}/slides/import/"])
def test_deeply_nested_json_is_a_json_400(alice, experiment, path):
    response = token_client(alice).post(API + path.format(exp=experiment.pk), data="[" * 2000 + "]" * 2000,
                                        content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert "nested too deeply" in response.json()["detail"]


@pytest.mark.django_db
def test_a_json_body_over_the_limit_is_a_json_413(alice):
    body = '{"name": "' + "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE + '"}'
    response = token_client(alice).post(f"{API}/experiments/", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    assert "larger than" in response.json()["detail"]


@pytest.mark.django_db
def test_ordinary_json_still_works(alice, lab_a):
    response = token_client(alice).post(f"{API}/experiments/", {"name": "Still fine", "lab": lab_a.pk}, format="json")
    assert response.status_code == 201, response.content
