"""A client that vanishes inside a transaction (a worker machine's power cut) does not stop the
others for long: PostgreSQL ends its session after DATABASE_IDLE_TRANSACTION_SECONDS, and with
it the row locks it held."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.db import connection

from predictions import dispatch
from predictions.models import DispatchLock
from tests.conftest import REPO, _database_url_for_workers, wait_for

pytestmark = pytest.mark.skipif(os.environ.get("DATABASE_URL", "").split(":")[0] not in ("postgres", "postgresql"),
                                reason="the idle-session timeout is PostgreSQL's")

# A worker process in the middle of a dispatch: it holds the cpu queue's dispatch lock, then
# freezes as a process on a machine that lost its power would (it never sends another byte).
FROZEN_DISPATCHER = """
import os, signal, django
django.setup()
from django.db import transaction
from django.utils import timezone
from predictions.models import DispatchLock
with transaction.atomic():
    DispatchLock.objects.filter(queue="cpu").update(at=timezone.now())
    print("locked", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_the_sessions_have_the_idle_transaction_timeout(db, settings):
    with connection.cursor() as cursor:
        cursor.execute("SELECT setting FROM pg_settings WHERE name = 'idle_in_transaction_session_timeout'")
        assert int(cursor.fetchone()[0]) == 1_800_000   # ms: DATABASE_IDLE_TRANSACTION_SECONDS' default


def test_a_dispatcher_frozen_while_holding_the_lock_holds_the_others_only_until_the_timeout(transactional_db):
    DispatchLock.objects.get_or_create(queue="cpu")
    env = dict(os.environ, DATABASE_URL=_database_url_for_workers(), DATABASE_IDLE_TRANSACTION_SECONDS="2",
               DJANGO_SETTINGS_MODULE="histoia.settings", DEBUG="1")
    frozen = subprocess.Popen([sys.executable, "-c", FROZEN_DISPATCHER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert frozen.stdout.readline().strip() == b"locked"
        wait_for(lambda: open(f"/proc/{frozen.pid}/stat").read().split()[2] == "T", message="the process to freeze")
        started = time.monotonic()
        done = threading.Event()

        def dispatch_here():
            dispatch.dispatch("cpu")
            connection.close()
            done.set()

        threading.Thread(target=dispatch_here, daemon=True).start()
        # Blocked on the lock at first, then free once the server has ended the frozen session.
        assert not done.wait(1.0)
        assert done.wait(30), "the dispatcher still waits for the frozen client's lock"
        assert time.monotonic() - started < 15
    finally:
        os.killpg(frozen.pid, signal.SIGKILL)
        frozen.wait()
