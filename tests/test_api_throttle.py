"""API writes are throttled per user (burst and sustained): past the burst, a 429 in JSON says
how long to wait, while reads and other users go on."""

import pytest
from django.conf import settings
from rest_framework.settings import api_settings

from tests.conftest import token_client

API = "/api/v1"


@pytest.mark.django_db
def test_writes_past_the_burst_are_a_429_that_says_when_to_retry(alice, bob, lab_a):
    from django.core.cache import cache

    cache.clear()
    burst = int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["write_burst"].split("/")[0])
    assert api_settings.DEFAULT_THROTTLE_RATES["write_burst"] == f"{burst}/min"
    client = token_client(alice)
    statuses = [client.post(f"{API}/experiments/", {"name": f"E{i}", "lab": lab_a.pk}, format="json").status_code
                for i in range(burst)]
    assert statuses == [201] * burst
    refused = client.post(f"{API}/experiments/", {"name": "one too many", "lab": lab_a.pk}, format="json")
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "throttled" in refused.json()["detail"].lower()
    # Reads go on, and another user is not affected.
    assert client.get(f"{API}/experiments/").status_code == 200
    assert token_client(bob).get(f"{API}/experiments/").status_code == 200
