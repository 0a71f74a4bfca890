"""The embedded defaults (SQLite, kombu's filesystem broker), which `make run` uses, run the same
flows as the real stack: the upload, and the order the queue runs predictions in.

Each runs test modules in a child pytest with DATABASE_URL and CELERY_BROKER_URL unset, in a
throw-away var/ folder, so the child starts its own real workers on the filesystem broker. The
queue's order depends on timing the two stacks do not share (the filesystem broker is polled), so
a change to how work is sent must pass here too.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_on_embedded_stack(tmp_path, *tests: str) -> str:
    if not os.environ.get("DATABASE_URL") and not os.environ.get("CELERY_BROKER_URL"):
        pytest.skip("this run already uses the embedded defaults")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "HISTOIA_REQUIRE_REAL_STACK")}
    env["HISTOIA_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.worker
def test_upload_flow_on_sqlite_and_the_filesystem_broker(tmp_path):
    out = run_on_embedded_stack(tmp_path, "tests/test_slide_upload.py",
                                "tests/test_settings.py::test_sqlite_defaults_allow_concurrent_writers")
    assert "5 passed" in out, out[-2000:]


# Not the crash-recovery cases: the filesystem broker forgets a message as soon as a worker takes
# it (no acknowledgement), so work held by a killed worker waits for the stuck sweep (beat, 15
# minutes). That is one reason the embedded stack is for trying Histo-IA out, not for a lab.
ORDER = [f"tests/test_queue_order.py::{name}" for name in (
    "test_predictions_submitted_back_to_back_end_in_submit_order",
    "test_urgent_overtakes_waiting_work_but_not_started_work",
    "test_two_labs_take_turns",
    "test_a_cancelled_prediction_frees_its_place_at_once",
)]


@pytest.mark.worker
def test_queue_order_on_sqlite_and_the_filesystem_broker(tmp_path):
    out = run_on_embedded_stack(tmp_path, *ORDER, "tests/test_queues.py")
    # Every one of them ran and passed: none skipped as needing the real stack.
    queue_tests = len(re.findall(r"^def test_", (REPO / "tests" / "test_queues.py").read_text(), re.MULTILINE))
    assert f"{len(ORDER) + queue_tests} passed" in out and "skipped" not in out, out[-2000:]
