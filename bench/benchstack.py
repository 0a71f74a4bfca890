"""Shared helpers of the benchmarks in bench/: a throw-away Histo-IA stack, its processes, the machine.

Nothing here touches the project's var/ folder, its database or the shared broker:

- `--stack embedded` (default): a fresh folder /tmp/bench-var-<name>-XXXX used as HISTOIA_VAR_DIR,
  with its own SQLite database, kombu filesystem-broker folders and media folder, removed at
  the end (unless --keep);
- `--stack real`: PostgreSQL and RabbitMQ as in production, but a dedicated database
  (`histoia_bench`, dropped and created again at each start) and a dedicated RabbitMQ vhost
  (`histoia-bench`, created with rabbitmqctl if missing; only its own queues are purged).
  Never the `/` vhost, never another database, never a restart of either server.

Processes (celery workers, gunicorn) are started with the commands of the Procfile and
docker/ (DEBUG off, as in production), in their own process groups, and stopped by their own
process group id only.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import make_large_slide  # noqa: E402  (the large-slide generator, reused)

CMU_SLIDE = make_large_slide.CMU_SLIDE
PASSWORD = "bench-password-not-secret"
SECRET = "bench-only-not-a-secret-" + "x" * 40

REAL_DB_NAME = "histoia_bench"
REAL_DB_URL = f"postgres://postgres@127.0.0.1:5432/{REAL_DB_NAME}"
REAL_VHOST = "histoia-bench"
REAL_BROKER_URL = f"amqp://guest:guest@127.0.0.1:5672/{REAL_VHOST}"


# -- the machine ----------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem, "python": platform.python_version(),
            "gpu": _gpu()}
    return info


def _gpu() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().replace("\n", ", ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "none"


def polling_interval() -> float:
    """The filesystem broker's polling interval, as histoia/settings.py sets it."""
    from django.conf import settings

    return settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("polling_interval", 1.0)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def command_line(script: str) -> str:
    import shlex

    return " ".join([".venv/bin/python", f"bench/{script}", *map(shlex.quote, sys.argv[1:])])


def print_header(title: str, report: dict) -> None:
    m = report["machine"]
    print(f"== {title}")
    print(f"machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB RAM, Python {m['python']}, GPU: {m['gpu']}")
    print(f"stack:   {report.get('stack_description', '')}")
    print(f"command: {report['command']}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int, path: str, status: int) -> bool:
    """Whether a server on 127.0.0.1:port answers GET path with this status yet."""
    import http.client

    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status == status
    except OSError:
        return False


def percentile(values, q) -> float:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if len(values) else float("nan")


# -- the throw-away stack -------------------------------------------------------------------------
class Stack:
    """A throw-away Histo-IA: settings, database, broker, media, and the processes started on it."""

    def __init__(self, name: str, kind: str = "embedded", keep: bool = False):
        if kind not in ("embedded", "real"):
            raise ValueError(kind)
        self.kind, self.keep = kind, keep
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-var-{name}-", dir="/tmp"))
        self.var = self.work / "var"
        self.media = self.work / "media"
        self.var.mkdir()
        self.media.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.suffix = f"bench{os.getpid()}"

    @property
    def description(self) -> str:
        """What the stack runs on (read once setup_django() has configured Django)."""
        if self.kind == "embedded":
            return (f"embedded (throw-away HISTOIA_VAR_DIR={self.var}: SQLite in WAL mode + kombu filesystem "
                    f"broker, polling {polling_interval()} s)")
        return (f"real (PostgreSQL database {REAL_DB_NAME} on 127.0.0.1, RabbitMQ vhost {REAL_VHOST} on 127.0.0.1; "
                f"dedicated to the benchmark)")

    def env(self, debug: bool = False) -> dict:
        drop = ("DATABASE_URL", "CELERY_BROKER_URL", "HISTOIA_REQUIRE_REAL_STACK", "MEDIA_ROOT",
                "CELERY_WORKER_CONCURRENCY", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update({
            "DJANGO_SETTINGS_MODULE": "histoia.settings",
            "HISTOIA_VAR_DIR": str(self.var),
            "MEDIA_ROOT": str(self.media),
            "SLIDE_IMPORT_ROOT": "",
            "DEBUG": "1" if debug else "0",
            "SECRET_KEY": SECRET,
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "SECURE_SSL_REDIRECT": "0", "SECURE_COOKIES": "0", "SECURE_HSTS_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
            # The benchmarks measure the platform, not its per-user limits (a load test is one
            # user submitting as fast as it can).
            "API_WRITE_THROTTLE_BURST": "1000000/min", "API_WRITE_THROTTLE_SUSTAINED": "1000000/hour",
            "HISTOIA_MAX_ACTIVE_PER_USER": "0", "HISTOIA_MAX_ACTIVE_PER_LAB": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        if self.kind == "embedded":
            env["DATABASE_URL"] = f"sqlite:///{self.var / 'bench.sqlite3'}"
        else:
            env["DATABASE_URL"] = REAL_DB_URL
            env["CELERY_BROKER_URL"] = REAL_BROKER_URL
        return env

    def _prepare_real(self) -> None:
        pg = ["-h", "127.0.0.1", "-U", "postgres"]
        subprocess.run(["dropdb", *pg, "--if-exists", REAL_DB_NAME], check=True)
        subprocess.run(["createdb", *pg, REAL_DB_NAME], check=True)
        vhosts = subprocess.run(["rabbitmqctl", "list_vhosts", "-q"], capture_output=True, text=True, check=True)
        if REAL_VHOST not in vhosts.stdout.split():
            subprocess.run(["rabbitmqctl", "add_vhost", REAL_VHOST], check=True, capture_output=True)
            subprocess.run(["rabbitmqctl", "set_permissions", "-p", REAL_VHOST, "guest", ".*", ".*", ".*"],
                           check=True, capture_output=True)

    def setup_django(self) -> None:
        """Point this process at the stack, migrate, and purge the stack's own queues."""
        if self.kind == "real":
            self._prepare_real()
        os.environ.update(self.env(debug=False))
        for key in ("HISTOIA_REQUIRE_REAL_STACK", "CELERY_WORKER_CONCURRENCY"):
            os.environ.pop(key, None)
        if self.kind == "embedded":
            os.environ.pop("CELERY_BROKER_URL", None)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        # DEBUG off serves static files from the collected manifest, as in production; a fresh
        # clone has none until this.
        call_command("collectstatic", verbosity=0, interactive=False)
        if self.kind == "real":
            from histoia.celery import app

            app.control.purge()   # the benchmark's own vhost only (CELERY_BROKER_URL above)

    def benchmark_slides(self, slide_path: Path):
        """A lab member, an experiment, the slide to measure and the small CMU slide (for the
        untimed warm-up run), checked by the upload's own validation: (user, experiment, slide, warm)."""
        user, lab = self.lab_user()
        experiment = self.experiment(lab, user)
        return user, experiment, self.add_slide(experiment, slide_path), self.add_slide(experiment, CMU_SLIDE)

    def lab_user(self, username="bench", lab_name="Bench lab"):
        from django.contrib.auth import get_user_model

        from experiments.models import Lab

        user = get_user_model().objects.create_user(username, password=PASSWORD)
        lab, _ = Lab.objects.get_or_create(name=lab_name)
        lab.members.add(user)
        return user, lab

    def experiment(self, lab, user, name="Benchmark"):
        from experiments.models import Experiment

        return Experiment.objects.create(name=name, lab=lab, created_by=user)

    def two_labs(self):
        """The benchmark's user with an experiment in their lab, and another lab's experiment:
        (user, [theirs, the other lab's], {experiment id: its ready copy of the CMU slide})."""
        user, lab = self.lab_user()
        other, other_lab = self.lab_user("other", "Other lab")
        experiments = [self.experiment(lab, user), self.experiment(other_lab, other, "Other")]
        return user, experiments, {e.pk: self.add_slide(e, CMU_SLIDE) for e in experiments}

    def add_slide(self, experiment, path: Path, name: str | None = None):
        """A ready slide, checked by the upload's own validation code; the file is linked, not copied."""
        from experiments.models import Slide
        from experiments.tasks import validate_slide

        name = name or path.name
        self._slides = getattr(self, "_slides", 0) + 1
        target = self.media / "slides" / "bench" / f"{self._slides}-{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(path).resolve())
        slide = Slide.objects.create(experiment=experiment, original_name=name,
                                     file=str(target.relative_to(self.media)))
        validate_slide(slide.pk)
        slide.refresh_from_db()
        if slide.status != Slide.Status.READY:
            raise SystemExit(f"{path} is not a readable slide: {slide.error}")
        return slide

    # -- processes --------------------------------------------------------------------------------
    def worker_command(self, queue: str, concurrency: int, name: str | None = None) -> list[str]:
        """As the Procfile and docker/compose.yaml start them (cpu: prefork; gpu: solo, one at a time)."""
        celery = [sys.executable, "-m", "celery", "-A", "histoia", "worker", "--loglevel=INFO"]
        name = name or f"{queue}@{self.suffix}"
        if queue == "cpu":
            return celery + ["-Q", "cpu", "-P", "prefork", f"--concurrency={concurrency}", "-n", name]
        return celery + ["-Q", "gpu", "-P", "solo", "-c", "1", "--prefetch-multiplier", "1", "-n", name]

    def start(self, key: str, cmd: list[str], ready=None, timeout: float = 90, env: dict | None = None):
        log = self.work / f"{key}.log"
        fh = open(log, "ab")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or self.env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[key], self.logs[key] = proc, log
        deadline = time.monotonic() + timeout
        while ready is not None:
            if proc.poll() is not None:
                raise SystemExit(f"{key} exited at start; see {log}:\n{log.read_text()[-3000:]}")
            if ready():
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{key} did not become ready within {timeout} s; see {log}")
            time.sleep(0.2)
        return proc

    def start_worker(self, queue: str, concurrency: int = 1, key: str | None = None) -> list[str]:
        key = key or f"worker-{queue}"
        cmd = self.worker_command(queue, concurrency, name=f"{key}@{self.suffix}")
        log = self.work / f"{key}.log"
        self.start(key, cmd, ready=lambda: log.exists() and b" ready." in log.read_bytes())
        return cmd

    def gunicorn_command(self, port: int, workers: int = 2) -> tuple[list[str], dict]:
        """gunicorn as docker/Dockerfile starts it: its GUNICORN_CMD_ARGS, WEB_CONCURRENCY workers."""
        line = next(line for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()
                    if line.startswith("ENV GUNICORN_CMD_ARGS="))
        args = line.split("=", 1)[1].strip('"')
        args = args.replace("--bind=0.0.0.0:8000", f"--bind=127.0.0.1:{port}")
        if os.environ.get("BENCH_ACCESS_LOG_DIR"):
            # Each request's time inside gunicorn (%(D)s, µs): what a client's latency adds to it
            # is the wait for a free thread.
            log = Path(os.environ["BENCH_ACCESS_LOG_DIR"]) / f"access-{port}.log"
            args += f' --access-logfile {log} --access-logformat "%(t)s %(p)s %(m)s %(U)s %(s)s %(D)s"'
        env = self.env(debug=False)
        env.update(GUNICORN_CMD_ARGS=args, WEB_CONCURRENCY=str(workers))
        gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
        return [gunicorn, "histoia.wsgi:application"], env

    def start_gunicorn(self, workers: int = 2) -> tuple[str, str]:
        port = free_port()
        cmd, env = self.gunicorn_command(port, workers)
        subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=REPO, env=env,
                       check=True)
        self.start("gunicorn", cmd, ready=lambda: answers(port, "/healthz", 200), timeout=60, env=env)
        shown = f"GUNICORN_CMD_ARGS=\"{env['GUNICORN_CMD_ARGS']}\" WEB_CONCURRENCY={workers} gunicorn histoia.wsgi:application"
        return f"http://127.0.0.1:{port}", shown

    def cpu_seconds(self, keys=None) -> float:
        """CPU time (user + system) used so far by the processes of these started commands (all
        by default), children included: every process in their process groups. Less sensitive than
        wall time to other work on the machine."""
        groups = {self.procs[k].pid for k in (keys or self.procs) if k in self.procs}
        return group_cpu_seconds(groups)

    def stop(self, key: str) -> None:
        proc = self.procs.pop(key, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.stop(key)

    def close(self) -> None:
        self.stop_all()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        if self.kind == "real":
            try:
                from histoia.celery import app

                app.control.purge()
            except Exception:
                pass
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def _processes():
    """(command name, the fields of /proc/<pid>/stat after it) of every process now."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name, rest = (entry / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            except (OSError, ValueError):
                continue
            # after the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) cutime(13) cstime(14)
            yield name, rest.split()


def group_cpu_seconds(groups: set[int]) -> float:
    """CPU time so far of the live processes of these process groups (a process that exits takes
    its time with it: gunicorn's and celery's pool processes live as long as a benchmark)."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in _processes() if int(f[2]) in groups)
    return ticks / os.sysconf("SC_CLK_TCK")


def command_cpu_seconds(command: str) -> float:
    """CPU time so far of every process named `command` on the machine (a service the benchmark
    did not start: "postgres", "beam.smp"), with what the children they reaped used (a database's
    ended sessions). Whoever else uses that service is counted too: run nothing else meanwhile."""
    ticks = sum(sum(int(x) for x in f[11:15]) for name, f in _processes() if name == command)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    idle = ticks[3] + ticks[4]    # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / tick, sum(ticks) / tick


class CpuMeter:
    """Where a run's CPU went: seconds per part, read before and after (`parts`: name -> a
    function giving that part's CPU seconds so far), and how busy the whole machine was."""

    def __init__(self, parts: dict):
        self.parts = parts

    def __enter__(self):
        self.before = {name: read() for name, read in self.parts.items()}
        self.machine_before = machine_busy_seconds()
        return self

    def __exit__(self, *exc):
        self.used = {name: read() - self.before[name] for name, read in self.parts.items()}
        busy, total = (after - before for after, before in zip(machine_busy_seconds(), self.machine_before))
        self.used["machine"] = busy
        self.machine_busy = busy / total if total else 0.0
        return False

    def per_request_ms(self, requests: int) -> dict:
        return {name: round(seconds * 1000 / max(1, requests), 2) for name, seconds in self.used.items()}


def cpu_parts(stack: Stack, web: str = "gunicorn") -> dict:
    """The parts a run's CPU is charged to, for CpuMeter: the web server (the started command
    `web`), the machine's PostgreSQL and RabbitMQ (on the embedded stack SQLite and the filesystem
    broker work inside the web and worker processes, and these read near zero), the workers, and
    the client (this process and its ended children: wrk, or the python client's threads)."""
    import resource

    def client() -> float:
        return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                     resource.getrusage(resource.RUSAGE_CHILDREN)))

    def workers() -> float:
        keys = [k for k in stack.procs if k.startswith("worker-")]
        return stack.cpu_seconds(keys) if keys else 0.0

    return {"web": lambda: stack.cpu_seconds([web]), "database": lambda: command_cpu_seconds("postgres"),
            "broker": lambda: command_cpu_seconds("beam.smp"), "workers": workers, "client": client}


# -- predictions ----------------------------------------------------------------------------------
def pipeline_row(name: str):
    from predictions.models import Pipeline

    row = Pipeline.objects.current(name)
    if row is None:
        raise SystemExit(f"no pipeline {name}")
    return row


def wait_final(prediction_id: int, timeout: float, poll: float = 0.1):
    """Poll the database until the prediction has ended; returns (row, seconds waited)."""
    from predictions.models import Prediction

    started = time.monotonic()
    while True:
        row = Prediction.objects.get(pk=prediction_id)
        if row.is_final:
            return row, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"prediction #{prediction_id} still {row.status} after {timeout:.0f} s "
                             f"({row.done_units}/{row.total_units} units)")
        time.sleep(poll)


def batch_phases(prediction_id: int) -> dict:
    """Where the time of a finished prediction went, from its own rows (server clocks)."""
    from predictions.models import BatchResult, Prediction, SlideRun

    p = Prediction.objects.get(pk=prediction_id)
    runs = list(SlideRun.objects.filter(prediction_id=prediction_id))
    batches = list(BatchResult.objects.filter(run__prediction_id=prediction_id).order_by("started_at")
                   .values("started_at", "finished_at", "seconds", "tiles", "worker"))
    out = {"batches": len(batches), "tiles": sum(b["tiles"] for b in batches),
           "batch_seconds_sum": round(sum(b["seconds"] for b in batches), 2),
           "run_timings": [r.timings for r in runs]}
    if batches:
        first, last = batches[0]["started_at"], max(b["finished_at"] for b in batches)
        out["tile_phase_s"] = round((last - first).total_seconds(), 3)
        out["submit_to_first_batch_s"] = round((first - p.created_at).total_seconds(), 3)
        out["last_batch_to_finished_s"] = round((p.finished_at - last).total_seconds(), 3)
        out["workers"] = sorted({b["worker"] for b in batches})
    out["created_to_finished_s"] = round((p.finished_at - p.created_at).total_seconds(), 3)
    return out


def add_profile_option(parser, what: str) -> None:
    parser.add_argument("--profile", action="store_true",
                        help=f"cProfile {what}: the top PROFILE_TOP (30) by PROFILE_SORT (cumulative), of the "
                             "functions matching the regular expression PROFILE_FILTER")


def print_profile(profiler) -> None:
    """What --profile prints (add_profile_option)."""
    import pstats

    stats = pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "cumulative"))
    if os.environ.get("PROFILE_DUMP"):   # a file for pstats, snakeviz and the like
        stats.dump_stats(os.environ["PROFILE_DUMP"])
    stats.print_stats(os.environ.get("PROFILE_FILTER", ""), int(os.environ.get("PROFILE_TOP", "30")))


def dump(path: Path | None, report: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2, default=str))


def same_memory_as_workers() -> str:
    """Give this process a worker's malloc limits (histoia/malloc.py), for a plain loop run here
    beside Histo-IA: the ratio is then the platform's cost, not the allocator's luck. What was
    done, in words."""
    from django.conf import settings

    from histoia.malloc import keep_freed_memory

    return keep_freed_memory(settings.WORKER_MALLOC_MMAP_THRESHOLD_MB, settings.WORKER_MALLOC_TRIM_THRESHOLD_MB)


def top_up(target: int, experiments, pipeline, slides) -> None:
    """Queued predictions (one slide run each) until `target` are waiting, turns as submits give."""
    from predictions import dispatch
    from predictions.models import Prediction, SlideRun, Status

    waiting = Prediction.objects.filter(status=Status.QUEUED).count()
    missing = target - waiting
    batch = []
    for i in range(missing):
        experiment = experiments[i % len(experiments)]
        batch.append(Prediction(experiment=experiment, pipeline=pipeline, params=pipeline.code.parse_params({}),
                                turn=dispatch.new_turn(experiment.lab_id) if i < 2 else 0))
    # Turns as a submit gives them: each lab's next turn, in submit order (computed in bulk here).
    last = {}
    for p in batch:
        last[p.experiment.lab_id] = p.turn = max(p.turn, last.get(p.experiment.lab_id, p.turn - 1) + 1)
    for start in range(0, len(batch), 2000):
        created = Prediction.objects.bulk_create(batch[start:start + 2000])
        SlideRun.objects.bulk_create([SlideRun(prediction=p, slide=slides[p.experiment_id], status=Status.QUEUED,
                                               slide_sha256=slides[p.experiment_id].sha256) for p in created])
    analyze()


def analyze() -> None:
    """After a bulk load, what the database's autovacuum and checkpointer would do a little later:
    table statistics (without them a planner that thinks the tables small picks plans that are
    not production's), and on PostgreSQL the vacuum and checkpoint, which would otherwise run
    during the measurement and slow every query and commit of it."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("CHECKPOINT")
        else:
            cursor.execute("ANALYZE")
