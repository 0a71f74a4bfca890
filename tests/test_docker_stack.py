"""The production container stack in docker/: services, commands, environment and images agree
with the code they run.

Static checks, with no database and no Docker daemon: compose.yaml is read with PyYAML (the
tests that need it are skipped where PyYAML is not installed), with its ${...} substitutions
filled from env.example as docker compose would fill them from docker/.env; the Dockerfiles and
rabbitmq.conf are read as text. `docker compose config` runs where the compose plugin exists.
"""

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / "env.example"
RABBITMQ_CONF = DOCKER / "rabbitmq.conf"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]

# The variables settings.py must get in production: it has no usable default for them.
REQUIRED_IN_PRODUCTION = ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS")
# Variables the application containers may carry that settings.py does not read, and who does.
READ_ELSEWHERE = {
    "CPU_CONCURRENCY": "worker-cpu's command in compose.yaml",
    "WEB_CONCURRENCY": "gunicorn (number of worker processes)",
    "GUNICORN_CMD_ARGS": "gunicorn (its options)",
    "CUDA_VISIBLE_DEVICES": "the CUDA runtime under torch",
}
# Prefixes of the variables that the other images read (env.example is the env_file of the
# application services too, so those carry them as well).
READ_BY_OTHER_IMAGES = {"POSTGRES_": "postgres", "RABBITMQ_": "rabbitmq", "FLOWER_": "flower"}
# Standard variables of the Python and apt tooling in the Dockerfiles.
IMAGE_TOOLING = re.compile(r"^(PYTHON\w*|PIP_\w+|PATH|DEBIAN_FRONTEND)$")
# What each image outside this project may be given.
OTHER_SERVICES_ENV = {
    "postgres": re.compile(r"^POSTGRES_\w+$"),
    "rabbitmq": re.compile(r"^RABBITMQ_\w+$"),
    "flower": re.compile(r"^(FLOWER_\w+|CELERY_BROKER_URL)$"),
}


# --- reading the files ----------------------------------------------------------------------

def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value
    return values


_SUBST = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """docker compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$."""

    def substitute(match):
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?"):
            assert current or (op == "?" and current is not None), f"compose needs {name}: {arg}"
        return current or ""

    return _SUBST.sub(substitute, value)


def substituted_names(text: str) -> set[str]:
    names = set()
    for match in _SUBST.finditer(text):
        if match.group(0) != "$$":
            names.add(match.group(1) or match.group(4))
    return names


def _interpolate_tree(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def settings_env_names() -> set[str]:
    """Every variable histoia/settings.py reads through django-environ."""
    source = (REPO / "histoia" / "settings.py").read_text()
    return set(re.findall(r"\benv(?:\.\w+)?\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", source))


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [args for keyword, args in dockerfile_instructions(path) if keyword == "CMD"]
    assert cmds, f"{path.name} has no CMD"
    return json.loads(cmds[-1])


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for keyword, args in dockerfile_instructions(path):
        if keyword == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env_example) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: it reads docker/compose.yaml")
    return _interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()), env_example)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def dockerfile_of(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    build = {"context": build} if isinstance(build, str) else build
    return (COMPOSE_FILE.parent / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()


def app_services(services) -> dict[str, dict]:
    """The services that run this project's images (built from docker/Dockerfile*)."""
    return {name: s for name, s in services.items() if dockerfile_of(s) is not None}


def commands_of(service: dict) -> list[list[str]]:
    """The programs a service runs, as argv lists: its command (or its image's CMD), with a
    `sh -c "a && exec b"` wrapper opened up into [a, b]."""
    command = service.get("command")
    if command is None:
        command = dockerfile_cmd(dockerfile_of(service))
    argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    programs = []
    for part in re.split(r"&&|;|\|\|", argv[2]):
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words:
            programs.append(words)
    return programs


def main_command(service: dict) -> list[str]:
    return commands_of(service)[-1]


def service_env(service: dict, env_example: dict[str, str]) -> dict[str, str]:
    """What the container's environment holds from compose: env_file, then environment."""
    env = {}
    env_files = service.get("env_file") or []
    for env_file in [env_files] if isinstance(env_files, str | dict) else env_files:
        path = env_file["path"] if isinstance(env_file, dict) else env_file
        assert path == ".env", f"env_file {path!r}: the stack's settings live in docker/.env"
        env.update(env_example)
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    env.update({key: "" if value is None else str(value) for key, value in environment.items()})
    return env


def volume_mounts(service: dict) -> dict[str, str]:
    """source -> target of a service's volumes (short or long syntax)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["source"]] = volume["target"]
        else:
            source, target = volume.split(":")[:2]
            mounts[source] = target
    return mounts


# --- the celery command line ----------------------------------------------------------------

def celery_invocation(argv: list[str]) -> tuple[str, dict[str, str | bool], list[str]]:
    """(subcommand, {option name: value}, positional args) of a `celery ...` command line,
    read with Celery's own click definitions, so an unknown option fails here."""
    from celery.bin.celery import celery as cli

    assert argv[0] == "celery", argv

    def parse(params, words, stop_at_positional):
        aliases = {opt: p for p in params for opt in p.opts + p.secondary_opts if opt.startswith("-")}
        values, positional, i = {}, [], 0
        while i < len(words):
            word = words[i]
            if not word.startswith("-"):
                if stop_at_positional:
                    return values, words[i:]
                positional.append(word)
                i += 1
                continue
            name, eq, inline = word.partition("=")
            param = aliases.get(name)
            if param is None and not eq and len(name) > 2 and not name.startswith("--"):
                param, inline, eq = aliases.get(name[:2]), name[2:], True  # -Qcpu
            assert param is not None, f"celery has no option {word!r} here: {' '.join(argv)}"
            if getattr(param, "is_flag", False) and not eq:
                values[param.name] = True
                i += 1
            elif eq:
                values[param.name] = inline
                i += 1
            else:
                values[param.name] = words[i + 1]
                i += 2
        return values, positional

    global_values, rest = parse(cli.params, argv[1:], stop_at_positional=True)
    assert rest, f"no celery subcommand in {argv}"
    sub = rest[0]
    assert sub in cli.commands, f"celery has no subcommand {sub!r}"
    values, positional = parse(cli.commands[sub].params, rest[1:], stop_at_positional=False)
    return sub, {**global_values, **values}, positional


def celery_workers(services) -> dict[str, dict]:
    return {name: s for name, s in app_services(services).items()
            if main_command(s)[0] == "celery" and celery_invocation(main_command(s))[0] == "worker"}


# --- tests: entry points --------------------------------------------------------------------

def test_every_command_runs_a_program_that_exists(services):
    seen = set()
    for name, service in app_services(services).items():
        for argv in commands_of(service):
            program = argv[0]
            seen.add(program)
            if program == "celery":
                sub, options, _ = celery_invocation(argv)
                assert options.get("app") == "histoia", f"{name}: celery -A histoia expected"
                assert (REPO / "histoia" / "celery.py").is_file()
                from histoia.celery import app

                assert app.main == "histoia"
            elif program == "gunicorn":
                module, _, attribute = argv[1].partition(":")
                assert callable(getattr(importlib.import_module(module), attribute or "application"))
            elif program == "python":
                assert argv[1] == "manage.py", f"{name}: {argv}"
                result = subprocess.run(
                    [sys.executable, "manage.py", "help", argv[2]], cwd=REPO,
                    env={**os.environ, "DEBUG": "1"}, capture_output=True, text=True, timeout=120,
                )
                assert result.returncode == 0, f"{name}: no manage.py command {argv[2]!r}\n{result.stderr}"
                assert f"manage.py {argv[2]}" in result.stdout
            elif program == "mkdir":
                pass
            else:
                pytest.fail(f"{name} runs {program!r}, which this test does not know how to check")
    assert {"celery", "gunicorn", "python"} <= seen


def test_gunicorn_options_of_the_image_are_valid():
    from gunicorn.config import Config

    env = dockerfile_env(DOCKER / "Dockerfile")
    assert dockerfile_cmd(DOCKER / "Dockerfile") == ["gunicorn", "histoia.wsgi:application"]
    args = shlex.split(env["GUNICORN_CMD_ARGS"])
    parsed = Config().parser().parse_args(args + ["histoia.wsgi:application"])  # exits on a bad option
    assert parsed.bind == ["0.0.0.0:8000"]
    # gthread keeps the worker's heartbeat going while a thread streams a long upload.
    assert parsed.worker_class == "gthread"


def test_python_snippets_in_health_checks_compile(services):
    for name, service in services.items():
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"<{name} healthcheck>", "exec")


def test_every_long_running_service_has_a_health_check(services):
    for name, service in services.items():
        if service.get("restart") == "no":  # one-shot (migrate)
            assert "healthcheck" not in service
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"] and not service["healthcheck"].get("disable"), name


def test_worker_health_checks_ping_their_own_node(services):
    for name, service in celery_workers(services).items():
        _, options, _ = celery_invocation(main_command(service))
        prefix = options["hostname"].split("@")[0]
        assert options["hostname"] == f"{prefix}@%h"
        check = " ".join(service["healthcheck"]["test"][1:])
        assert "inspect ping" in check and f"-d {prefix}@$HOSTNAME" in check, name
        celery_invocation(shlex.split(check.replace(" > /dev/null", "")))  # valid options


def test_web_health_check_targets_healthz_through_https_header(services):
    check = services["web"]["healthcheck"]["test"][3]
    assert "http://127.0.0.1:8000/healthz" in check and "'X-Forwarded-Proto': 'https'" in check


# --- tests: environment ---------------------------------------------------------------------

def test_settings_read_the_variables_this_test_expects():
    names = settings_env_names()
    assert set(REQUIRED_IN_PRODUCTION) <= names
    assert {"DEBUG", "CSRF_TRUSTED_ORIGINS", "MEDIA_ROOT", "SLIDE_IMPORT_ROOT",
            "SLIDE_UPLOAD_MAX_BYTES", "STATIC_ROOT"} <= names


def _read_by_someone(name: str) -> bool:
    return (name in settings_env_names() or name in READ_ELSEWHERE
            or name.startswith(tuple(READ_BY_OTHER_IMAGES)))


def test_every_variable_in_env_example_is_read(env_example):
    unread = [name for name in env_example if not _read_by_someone(name)]
    assert not unread, f"nothing reads {unread}: a typo, or a setting that is gone"


def test_every_variable_given_to_the_app_containers_is_read(services, env_example):
    for name, service in app_services(services).items():
        unread = [var for var in service_env(service, env_example) if not _read_by_someone(var)]
        assert not unread, f"{name}: nothing reads {unread}"
    for dockerfile in DOCKERFILES:
        unread = [var for var in dockerfile_env(dockerfile)
                  if not IMAGE_TOOLING.match(var) and not _read_by_someone(var)]
        assert not unread, f"{dockerfile.name}: nothing reads {unread}"


def test_other_images_get_only_their_own_variables(services):
    for name, allowed in OTHER_SERVICES_ENV.items():
        service = services[name]
        assert "env_file" not in service, f"{name} must not receive the application's secrets"
        extra = [var for var in service.get("environment") or {} if not allowed.match(var)]
        assert not extra, f"{name}: {extra}"


def test_every_substituted_variable_is_in_env_example(env_example):
    missing = substituted_names(COMPOSE_FILE.read_text()) - set(env_example)
    assert not missing, f"compose.yaml uses {missing}, which env.example does not set"


def test_production_variables_are_set_for_every_app_service(services, env_example):
    assert env_example["DEBUG"] in ("0", "false", "False", "off", "no"), "DEBUG must be off"
    for name, service in app_services(services).items():
        env = service_env(service, env_example)
        missing = [var for var in REQUIRED_IN_PRODUCTION if not env.get(var)]
        assert not missing, f"{name} lacks {missing}"


def test_env_example_documents_every_variable_and_holds_no_real_secret(env_example):
    block_has_comment = False
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            block_has_comment = False
        elif stripped.startswith("#"):
            block_has_comment = True
        else:
            assert block_has_comment, f"no comment above {stripped!r}"
    for name in ("SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_DEFAULT_PASS", "FLOWER_BASIC_AUTH"):
        assert "CHANGE-ME" in env_example[name], f"{name} must be a placeholder"


def test_urls_in_env_example_match_the_postgres_and_rabbitmq_accounts(services, env_example):
    db = urlsplit(env_example["DATABASE_URL"])
    assert db.scheme in ("postgres", "postgresql") and db.hostname == "postgres"
    assert db.hostname in services
    assert (unquote(db.username), unquote(db.password), db.path.lstrip("/")) == (
        env_example["POSTGRES_USER"], env_example["POSTGRES_PASSWORD"], env_example["POSTGRES_DB"])
    broker = urlsplit(env_example["CELERY_BROKER_URL"])
    assert broker.scheme == "amqp" and broker.hostname == "rabbitmq"
    assert broker.hostname in services
    assert (unquote(broker.username), unquote(broker.password), unquote(broker.path[1:])) == (
        env_example["RABBITMQ_DEFAULT_USER"], env_example["RABBITMQ_DEFAULT_PASS"],
        env_example["RABBITMQ_DEFAULT_VHOST"])


# --- tests: workers, beat, media ------------------------------------------------------------

def _worker(services, name):
    sub, options, _ = celery_invocation(main_command(services[name]))
    assert sub == "worker"
    return options


def test_cpu_worker_consumes_the_cpu_queue_with_prefork(services):
    from histoia.celery import QUEUES

    options = _worker(services, "worker-cpu")
    assert options["queues"] == "cpu" and "cpu" in QUEUES
    assert options["pool"] == "prefork"
    assert options["concurrency"] == "auto" or int(options["concurrency"]) >= 1


@pytest.mark.parametrize("source", ["compose", "Dockerfile.gpu"])
def test_gpu_worker_runs_one_task_at_a_time_on_the_gpu_queue(services, source):
    from histoia.celery import QUEUES

    argv = main_command(services["worker-gpu"]) if source == "compose" else dockerfile_cmd(DOCKER / "Dockerfile.gpu")
    sub, options, _ = celery_invocation(argv)
    assert sub == "worker"
    assert options["queues"] == "gpu" and "gpu" in QUEUES
    assert options["pool"] == "solo"
    assert int(options["concurrency"]) == 1
    assert int(options["prefetch_multiplier"]) == 1


def test_gpu_worker_reserves_one_gpu(services):
    service = services["worker-gpu"]
    assert dockerfile_of(service) == (DOCKER / "Dockerfile.gpu").resolve()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") == 1 or len(device.get("device_ids", [])) == 1
    assert service["environment"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_exactly_one_beat_with_the_database_scheduler(services):
    from django.conf import settings

    assert services["flower"]["command"][:2] == ["celery", "flower"]  # the only other celery
    beats = []
    for name, service in app_services(services).items():
        argv = main_command(service)
        if argv[0] != "celery":
            continue
        sub, options, _ = celery_invocation(argv)
        assert not options.get("beat"), f"{name}: a worker with an embedded beat (-B) is a second beat"
        if sub == "beat":
            beats.append((name, service, options))
    assert len(beats) == 1, [name for name, _, _ in beats]
    name, service, options = beats[0]
    assert options["scheduler"] == settings.CELERY_BEAT_SCHEDULER
    module, _, attribute = options["scheduler"].partition(":")
    assert getattr(importlib.import_module(module), attribute)
    assert service.get("deploy", {}).get("replicas", 1) == 1 and service.get("scale", 1) == 1


def test_media_volume_is_mounted_at_media_root_in_web_and_every_worker(compose, services, env_example):
    assert "media" in compose["volumes"]
    users = ["web", *celery_workers(services)]
    assert {"web", "worker-cpu", "worker-gpu"} <= set(users)
    targets = {name: volume_mounts(services[name]).get("media") for name in users}
    assert None not in targets.values(), targets
    assert len(set(targets.values())) == 1, targets
    target = targets["web"]
    for name in users:
        env = service_env(services[name], env_example)
        assert env["MEDIA_ROOT"] == target, name
    # Uploads are renamed into media, not copied: their temporary folder is on the same volume.
    assert env_example["FILE_UPLOAD_TEMP_DIR"].startswith(target.rstrip("/") + "/")


def test_rabbitmq_gets_the_config_file(services):
    mounts = volume_mounts(services["rabbitmq"])
    assert mounts.get("./rabbitmq.conf", "").startswith("/etc/rabbitmq/conf.d/")


def test_rabbitmq_consumer_timeout_is_far_above_the_task_time_limit():
    from histoia.celery import app

    match = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)\s*$", RABBITMQ_CONF.read_text(), re.M)
    assert match, "rabbitmq.conf must set consumer_timeout"
    timeout_ms = int(match.group(1))
    assert timeout_ms > 20 * 60 * 1000
    assert timeout_ms >= 2 * app.conf.task_time_limit * 1000


# --- tests: images --------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_and_the_whole_app(dockerfile):
    from django.conf import settings

    sources = set()
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        if any(word.startswith("--from") for word in words):
            continue
        words = [word for word in words if not word.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
            sources.add(source.rstrip("/"))
    local_apps = {app.split(".")[0] for app in settings.INSTALLED_APPS if (REPO / app.split(".")[0]).is_dir()}
    needed = {"manage.py", "requirements.txt", "histoia", "templates", "static"} | local_apps
    assert needed <= sources, f"{dockerfile.name} does not copy {needed - sources}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = [args for keyword, args in dockerfile_instructions(dockerfile) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_images_bases_and_torch_builds():
    cpu = DOCKER / "Dockerfile"
    gpu = DOCKER / "Dockerfile.gpu"
    assert [args for keyword, args in dockerfile_instructions(cpu) if keyword == "FROM"] == ["python:3.11-slim-bookworm"]
    assert "ARG CUDA_IMAGE=nvidia/cuda:12." in gpu.read_text()
    # Both take the torch version from requirements.txt, the way their RUN step reads it.
    pin = re.search(r"^torch==([^ ;#]*)", (REPO / "requirements.txt").read_text(), re.M)
    assert pin and pin.group(1)
    assert "download.pytorch.org/whl/cpu" in cpu.read_text()
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in gpu.read_text()


def test_compose_builds_from_files_that_exist(services):
    for name, service in app_services(services).items():
        assert dockerfile_of(service) in [path.resolve() for path in DOCKERFILES], name
        assert dockerfile_of(service).is_file()


# --- docker compose itself, where it is installed -------------------------------------------

def test_docker_compose_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    # A copy, so no docker/.env is ever written into the working tree.
    folder = tmp_path / "docker"
    folder.mkdir()
    shutil.copy(COMPOSE_FILE, folder / "compose.yaml")
    shutil.copy(RABBITMQ_CONF, folder / "rabbitmq.conf")
    shutil.copy(ENV_EXAMPLE, folder / ".env")
    result = subprocess.run([docker, "compose", "-f", str(folder / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr  # no warnings (e.g. unset variables)
