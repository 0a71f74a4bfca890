"""Production settings are sound, and CI really runs against PostgreSQL and RabbitMQ."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import REPO, real_stack_required


def test_check_deploy_is_clean_with_debug_off():
    env = {k: v for k, v in os.environ.items() if k != "DEBUG"}
    env.update(DEBUG="0", SECRET_KEY="x" * 20 + "production-secret-" + "y" * 30, ALLOWED_HOSTS="histoia.example.org")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


@pytest.mark.skipif(not real_stack_required(), reason="only CI promises PostgreSQL and RabbitMQ")
def test_ci_runs_on_postgresql_and_rabbitmq():
    assert connection.vendor == "postgresql"
    assert settings.CELERY_BROKER_URL.startswith("amqp://")
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS == {"confirm_publish": True}


def test_sqlite_defaults_allow_concurrent_writers(db):
    if connection.vendor != "sqlite":
        pytest.skip("the embedded SQLite defaults are checked when the suite runs on SQLite")
    with connection.cursor() as cursor:
        assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cursor.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000


@pytest.mark.parametrize("behind_proxy, status", [(None, 301), ("1", 404)])
def test_x_forwarded_proto_is_trusted_only_behind_a_declared_proxy(behind_proxy, status):
    """Without BEHIND_TLS_PROXY, a client claiming https over plain http is still redirected to
    https; with it (a proxy in front that sets the header), the claim is believed."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "BEHIND_TLS_PROXY")}
    env.update(DEBUG="0", SECRET_KEY="x" * 20 + "production-secret-" + "y" * 30, ALLOWED_HOSTS="testserver")
    if behind_proxy:
        env["BEHIND_TLS_PROXY"] = behind_proxy
    code = ("from django.test import Client; "
            "print(Client().get('/no-such-page/', HTTP_X_FORWARDED_PROTO='https').status_code)")
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(status)
