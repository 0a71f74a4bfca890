"""The embedded defaults (SQLite, kombu's filesystem broker) run the same upload flow.

Runs the upload test module in a child pytest with DATABASE_URL and CELERY_BROKER_URL unset,
in a throw-away var/ folder, so the child starts its own real worker on the filesystem broker.
"""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.worker
def test_upload_flow_on_sqlite_and_the_filesystem_broker(tmp_path):
    if not os.environ.get("DATABASE_URL") and not os.environ.get("CELERY_BROKER_URL"):
        pytest.skip("this run already uses the embedded defaults")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "HISTOIA_REQUIRE_REAL_STACK")}
    env["HISTOIA_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_slide_upload.py", "tests/test_settings.py::test_sqlite_defaults_allow_concurrent_writers"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout, result.stdout[-2000:]
