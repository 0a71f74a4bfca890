"""Shared fixtures: users in two labs, a real slide, and real Celery worker processes; and the
helpers several test files need (waiting, API clients, the web process over HTTP). The rows
themselves are made by the factories in tests/factories.py.

The workers are separate processes started with the same commands as the Procfile, consuming
from the configured broker (RabbitMQ in CI, the filesystem broker by default) and writing to
the test database. Tests that use them must use the transactional database, since a worker
cannot see rows inside a test's open transaction.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parents[1]
SLIDES = REPO.parent / "shared" / "data" / "slides"
CMU_SLIDE = SLIDES / "cmu-1-small-region.svs"
BROKEN_SLIDE = SLIDES / "broken.svs"
ARTIFACTS = REPO / "test-artifacts"
PASSWORD = "correct horse battery staple"
# One line per fault scenario (tests/faults.py counts them), printed at the end of the run so that CI's
# log shows the counts without -s.
FAULT_COUNTS = pytest.StashKey[list]()


@pytest.fixture
def fault_counts(request) -> list:
    return request.config.stash.setdefault(FAULT_COUNTS, [])


@pytest.fixture
def slides(make_slide, demo_model):
    """The fault suites' slides (tests/faults.py): three copies of the CMU slide."""
    return [make_slide(CMU_SLIDE, f"case-{i}.svs") for i in range(3)]


@pytest.fixture
def reference(request, workers, pipelines, slides):
    """The figures of an undisturbed round on the session's workers (tests/faults.py)."""
    from tests.faults import reference_figures

    return reference_figures(request, pipelines, slides, workers)


def pytest_terminal_summary(terminalreporter):
    lines = terminalreporter.config.stash.get(FAULT_COUNTS, [])
    if lines:
        terminalreporter.section("fault scenarios (tests/test_faults.py, test_hosts.py, test_broker_cluster.py)")
        for line in lines:
            terminalreporter.write_line(line)


def wait_for(predicate, timeout=60.0, interval=0.2, message="condition"):
    """Poll until predicate() is truthy; its last value is returned. Fails with `message`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def lab_a(db):
    from tests.factories import LabFactory

    return LabFactory(name="Pathology A")


@pytest.fixture
def lab_b(db):
    from tests.factories import LabFactory

    return LabFactory(name="Pathology B")


@pytest.fixture
def alice(lab_a):
    from tests.factories import MemberFactory

    return MemberFactory(username="alice", lab=lab_a)


@pytest.fixture
def bob(lab_b):
    """A member of another lab: must never see lab A's data."""
    from tests.factories import MemberFactory

    return MemberFactory(username="bob", lab=lab_b)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(alice, bob):
    from django.test import Client

    c = Client()
    c.force_login(bob)
    return c


def token_client(user):
    """An API client that authenticates as `user` with their token, as scripts do."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def alice_api(alice):
    return token_client(alice)


def csrf_checking_client(user):
    """A browser session of `user` that, like a real browser's, is refused a POST without the
    CSRF token (the test client skips that check by default)."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def experiment(alice, lab_a):
    from tests.factories import ExperimentFactory

    return ExperimentFactory(name="Liver fibrosis", lab=lab_a, created_by=alice)


@pytest.fixture
def slide(experiment):
    """A ready slide of lab A's experiment: a stored copy of the CMU slide, validated."""
    from tests.factories import SlideFactory

    return SlideFactory(experiment=experiment, original_name="case-01.svs")


_SESSION_DIRS = {}


def session_dir(tmp_path_factory, name):
    # Workers are started once per session with these folders, so they must not change per test.
    if name not in _SESSION_DIRS:
        _SESSION_DIRS[name] = tmp_path_factory.mktemp(name)
    return _SESSION_DIRS[name]


@pytest.fixture(autouse=True)
def fresh_queue_plan():
    """Each test starts without the queue plan and the pipelines' measured speeds an earlier one
    left in this process (queueing.py; the speeds are cached for 30 s)."""
    from django.core.cache import cache

    from predictions import queueing

    queueing.forget_recent_plan()
    cache.clear()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path_factory):
    settings.MEDIA_ROOT = str(session_dir(tmp_path_factory, "media"))
    settings.SLIDE_IMPORT_ROOT = ""


@pytest.fixture
def share(settings, tmp_path_factory, lab_a):
    """Lab A's import folder on the file share (SLIDE_IMPORT_ROOT/pathology-a), the share emptied
    for each test."""
    root = session_dir(tmp_path_factory, "share")
    for entry in root.iterdir():
        entry.unlink() if entry.is_file() or entry.is_symlink() else shutil.rmtree(entry)
    settings.SLIDE_IMPORT_ROOT = str(root)
    folder = root / lab_a.import_folder_name
    folder.mkdir()
    return folder


def _database_url_for_workers() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    url = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(url._replace(path=f"/{db['NAME']}"))


class Workers:
    """The running cpu and gpu worker processes and their names (as Celery reports them)."""

    def __init__(self, env, log_dir):
        self.env, self.log_dir = env, log_dir
        suffix = f"test{os.getpid()}"
        self.cpu_name, self.gpu_name = f"cpu@{suffix}", f"gpu@{suffix}"
        self.procs: dict[str, subprocess.Popen] = {}

    def command(self, kind):
        celery = [sys.executable, "-m", "celery", "-A", "histoia", "worker", "--loglevel=INFO",
                  "--without-mingle", "--without-gossip"]
        if kind == "cpu":
            return celery + ["-Q", "cpu", "-P", "prefork", "-c", "2", "-n", self.cpu_name]
        return celery + ["-Q", "gpu", "-P", "solo", "-c", "1", "-n", self.gpu_name]

    def start(self, kind):
        log = self.log_dir / f"worker-{kind}.log"
        offset = log.stat().st_size if log.exists() else 0
        fh = open(log, "ab")
        proc = subprocess.Popen(self.command(kind), cwd=REPO, env=self.env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[kind] = proc
        wait_for(lambda: b" ready." in log.read_bytes()[offset:] or proc.poll() is not None,
                 timeout=90, message=f"{kind} worker to start (see {log})")
        assert proc.poll() is None, f"{kind} worker exited at start; see {log}"
        return proc

    def kill(self, kind, sig=signal.SIGKILL):
        """Kill a worker and its pool children at once, as a crash or OOM kill would."""
        proc = self.procs.pop(kind)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    @contextmanager
    def running(self):
        """The cpu and gpu workers started, and stopped again however the block ends."""
        try:
            self.start("cpu")
            self.start("gpu")
            yield self
        finally:
            self.stop_all()

    def restart_exited(self):
        """Start again a worker that exited, as the deployment's supervisor would."""
        for kind, proc in list(self.procs.items()):
            if proc.poll() is not None:
                print(f"\n[faults] the {kind} worker exited ({proc.returncode}); supervisor starts it again")
                self.procs.pop(kind)
                self.start(kind)

    def stop_all(self):
        for kind, proc in list(self.procs.items()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


@pytest.fixture(scope="session")
def celery_workers(django_db_setup, django_db_blocker, tmp_path_factory):
    """Real cpu and gpu worker processes for the whole session (started on first use)."""
    from histoia.celery import app

    ARTIFACTS.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": _database_url_for_workers(),
        "MEDIA_ROOT": str(session_dir(tmp_path_factory, "media")),
        "SLIDE_IMPORT_ROOT": str(session_dir(tmp_path_factory, "share")),
        "DJANGO_SETTINGS_MODULE": "histoia.settings",
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
    })
    # Messages left by an earlier, interrupted run would name rows of another database.
    with django_db_blocker.unblock():
        app.control.purge()
    with Workers(env, ARTIFACTS).running() as workers:
        yield workers


@pytest.fixture
def workers(celery_workers, transactional_db):
    # A test may kill a worker; bring it back for the next test.
    for kind in ("cpu", "gpu"):
        if kind not in celery_workers.procs or celery_workers.procs[kind].poll() is not None:
            celery_workers.start(kind)
    yield celery_workers
    _let_running_steps_end()


def _let_running_steps_end(timeout: float = 15.0) -> None:
    """Wait (a little) for the steps still running on the workers to end before the database is
    emptied: a prediction is final before the step that ended it returns (it goes on to
    dispatch), and the flush's TRUNCATE deadlocked with that step's last queries. A step left
    "started" by a killed worker is not waited for beyond `timeout`."""
    from celery import states
    from django_celery_results.models import TaskResult

    deadline = time.monotonic() + timeout
    while TaskResult.objects.filter(status=states.STARTED).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def real_stack_required() -> bool:
    return os.environ.get("HISTOIA_REQUIRE_REAL_STACK") == "1"


@pytest.fixture
def slide_copy(tmp_path):
    """Copy a shared slide under another name (uploads must not touch the shared originals)."""
    def copy(source: Path, name: str | None = None) -> Path:
        target = tmp_path / (name or source.name)
        shutil.copyfile(source, target)
        return target
    return copy


@pytest.fixture
def make_slide(experiment):
    """A slide stored and validated like an upload (validation body run in-process)."""
    from tests.factories import SlideFactory

    def make(path: Path, name: str | None = None, exp=None):
        return SlideFactory(experiment=exp or experiment, source=path, original_name=name or path.name)

    return make


@pytest.fixture
def pipelines(transactional_db):
    """The current pipeline rows by name, committed, for tests whose work runs on the workers."""
    from tests.factories import pipeline_rows as current_rows

    return current_rows()


@pytest.fixture
def pipeline_rows(db):
    """The same rows inside the test's transaction: a prediction submitted there is never sent
    to a broker, since nothing is committed."""
    from tests.factories import pipeline_rows as current_rows

    return current_rows()


@pytest.fixture
def demo_model(transactional_db):
    from predictions.catalogue import register_demo_model

    return register_demo_model()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz_answers(base: str) -> bool:
    """Whether a web process at `base` (http://host:port) answers /healthz with 200 yet."""
    import requests

    try:
        return requests.get(f"{base}/healthz", timeout=5).status_code == 200
    except (requests.ConnectionError, requests.Timeout):  # still booting, or gone
        return False


def http_login(base: str, username: str, password: str = PASSWORD):
    """A requests session logged in through the login form of the web process at `base`."""
    import requests

    http = requests.Session()
    http.get(f"{base}/accounts/login/")
    http.post(f"{base}/accounts/login/", data={"username": username, "password": password,
              "csrfmiddlewaretoken": http.cookies["csrftoken"]}, headers={"Referer": base})
    return http


def wait_final(prediction, timeout=180):
    from predictions.models import Prediction

    def check():
        prediction.refresh_from_db()
        return prediction.is_final
    wait_for(check, timeout=timeout, message=f"prediction #{prediction.pk} to end "
             f"(last status {Prediction.objects.get(pk=prediction.pk).status})")
    return prediction
