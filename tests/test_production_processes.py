"""The production process commands, taken from docker/compose.yaml and docker/Dockerfile, run
here against the same database and broker as the suite (PostgreSQL and RabbitMQ in CI): web under
gunicorn, the cpu and gpu workers, beat. One slide is uploaded and one prediction pushed through
them over HTTP, as a browser would."""

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import yaml

from predictions.models import BatchResult, Prediction
from tests.conftest import (ARTIFACTS, CMU_SLIDE, REPO, free_port, healthz_answers, http_login, wait_final,
                            wait_for)

pytestmark = pytest.mark.worker

COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())


def compose_command(service):
    command = COMPOSE["services"][service]["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    return [w.replace("${CPU_CONCURRENCY:-auto}", "2") for w in words]


def gunicorn_args():
    env_line = next(line for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()
                    if line.startswith("ENV GUNICORN_CMD_ARGS="))
    return env_line.split("=", 1)[1].strip('"')


@pytest.fixture
def stack(celery_workers, transactional_db, pipelines):
    celery_workers.stop_all()  # the suite's own workers must not take this work
    port = free_port()
    env = dict(celery_workers.env)
    # The commands name `python`, `gunicorn` and `celery` as the image's PATH finds them.
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    env.update(DEBUG="0", SECRET_KEY="a-production-like-secret-" + "x" * 40, ALLOWED_HOSTS="127.0.0.1",
               SECURE_SSL_REDIRECT="0", SECURE_COOKIES="0", SECURE_HSTS_SECONDS="0", WEB_CONCURRENCY="2",
               GUNICORN_CMD_ARGS=re.sub(r"--bind=\S+", f"--bind=127.0.0.1:{port}", gunicorn_args())
               .replace("--worker-tmp-dir=/dev/shm ", ""))
    web = COMPOSE["services"]["web"]["command"][-1].split("exec ", 1)[1].split()
    commands = {
        "web": web,
        "worker-cpu": compose_command("worker-cpu"),
        "worker-gpu": compose_command("worker-gpu"),
        "beat": compose_command("beat"),
    }
    subprocess.run(["python", "manage.py", "collectstatic", "--noinput", "-v0"], cwd=REPO, env=env, check=True)
    procs = {}
    try:
        for name, command in commands.items():
            log = open(ARTIFACTS / f"prod-{name}.log", "wb")
            procs[name] = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthz_answers(base), timeout=60, message="gunicorn to answer /healthz")
        wait_for(lambda: all(b" ready." in (ARTIFACTS / f"prod-{n}.log").read_bytes()
                             for n in ("worker-cpu", "worker-gpu")), timeout=90, message="both workers ready")
        yield base, procs
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_one_prediction_through_gunicorn_both_workers_and_beat(stack, alice, experiment, pipelines, demo_model):
    base, procs = stack
    http = http_login(base, "alice")
    assert "sessionid" in http.cookies
    static = http.get(f"{base}/static/css/" + next(p.name for p in (REPO / "staticfiles" / "css").glob("histoia.*.css")))
    assert static.status_code == 200  # whitenoise serves the hashed static files

    with open(CMU_SLIDE, "rb") as fh:
        uploaded = http.post(f"{base}/experiments/{experiment.pk}/upload/", files={"files": fh},
                             data={"csrfmiddlewaretoken": http.cookies["csrftoken"]}, headers={"Referer": base})
    assert "is now being checked" in uploaded.text, uploaded.text[-3000:]
    slide = wait_for(lambda: experiment.slides.exclude(status="pending").first(), timeout=60, message="slide checked")
    assert slide.status == "ready", slide.error

    pipeline = pipelines["tissue-classifier"]
    response = http.post(f"{base}/predictions/new/{experiment.pk}/", headers={"Referer": base}, data={
        "csrfmiddlewaretoken": http.cookies["csrftoken"], "pipeline": pipeline.pk, "slides": [slide.pk],
        "priority": "normal", "param_min_tissue": "0.25", "submit": "1"})
    assert response.status_code == 200 and "queued on 1 slide" in response.text
    prediction = wait_final(Prediction.objects.get())
    assert prediction.status == "succeeded", prediction.error
    workers_used = set(BatchResult.objects.filter(run__prediction=prediction).values_list("worker", flat=True))
    assert workers_used and all(w.startswith("gpu@") for w in workers_used)  # the compose gpu worker
    page = http.get(f"{base}/predictions/{prediction.pk}/").text
    assert "class_fraction_cellular" in page
    assert all(p.poll() is None for p in procs.values()), "a production process exited"
    assert b"beat: Starting" in (ARTIFACTS / "prod-beat.log").read_bytes()
