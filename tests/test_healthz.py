"""/healthz answers without a login and tells whether the database is reachable."""

from django.db import connection


def test_healthz_needs_no_login_and_reports_ok(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_healthz_reports_an_unreachable_database(client, db, monkeypatch):
    def broken(*args, **kwargs):
        raise connection.Database.OperationalError("connection refused")
    with monkeypatch.context() as patch:
        patch.setattr(connection, "cursor", broken)
        response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["database"] == "unreachable"
