"""Viewer tile latency: Histo-IA under a real HTTP server, a logged-in session, tiles twice.

    .venv/bin/python bench/tile_latency.py                      # CMU slide + the 40,000 px benchmark slide
    .venv/bin/python bench/tile_latency.py --slides cmu --tiles 200 --concurrency 1
    .venv/bin/python bench/tile_latency.py --large /path/to/slide.tiff --server runserver

What it does, all on loopback and in a throw-away folder (never the project's var/ or database):

1. a fresh SQLite database and media folder; a user in a lab, an experiment, the slides (linked,
   not copied) checked by the same validation code as uploads; a session cookie for the user;
2. the app under gunicorn (gthread, DEBUG off, as in production; or `manage.py runserver` with
   --server runserver), the tile cache empty;
3. per slide, a warm-up as a viewer starts: the slide's DZI descriptor fetched on several
   connections, so every server process has loaded its code and opened the slide (not timed);
4. a simulated viewer session: the home view, then views zooming in level by level on seeded
   random points down to full resolution, each view a 1280 x 900 px window; the tiles a browser
   would request for those views (deduplicated, in order, at most --tiles) are fetched over
   --concurrency keep-alive connections, like a browser's parallel requests;
5. pass 1 is cold (every tile rendered from the slide and written to the cache), pass 2 fetches
   the same tiles again (cached), pass 3 again over one connection. Each pass stops after
   --max-seconds.

It prints p50/p95/p99 per pass and slide as the client sees them (the number the target is
about), the time inside the tile view itself (its Server-Timing header: lab check plus cache
read or rendering, without the HTTP server, middleware and queueing), the cache hits seen, the machine and the command, and
writes the same as JSON with --json. The large slide is generated once by make_large_slide.py
(under the temporary folder) unless --large names one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import benchstack  # noqa: E402
import make_large_slide  # noqa: E402

CMU_SLIDE = make_large_slide.CMU_SLIDE
VIEW_W, VIEW_H = 1280, 900
TARGET_P95_MS = 50.0


def machine() -> dict:
    """benchstack's description of the machine, with the platform and OpenSlide versions."""
    import openslide

    return {**benchstack.machine(), "platform": platform.platform(),
            "openslide": openslide.__library_version__, "openslide_python": openslide.__version__}


# -- the throw-away app -------------------------------------------------------------------------
def app_env(work: Path, debug: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "HISTOIA_REQUIRE_REAL_STACK", "MEDIA_ROOT")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "histoia.settings",
        "HISTOIA_VAR_DIR": str(work / "var"),
        "DATABASE_URL": f"sqlite:///{work / 'var' / 'bench.sqlite3'}",
        "CELERY_BROKER_URL": "memory://",
        "MEDIA_ROOT": str(work / "media"),
        "SLIDE_IMPORT_ROOT": "",
        "DEBUG": "1" if debug else "0",
        "SECRET_KEY": "bench-only-not-a-secret-" + "x" * 40,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0", "SECURE_COOKIES": "0", "SECURE_HSTS_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def prepare_app(work: Path, slides: dict[str, Path]) -> tuple[str, dict[str, dict]]:
    """Database, user, lab, experiment and ready slides; returns (session cookie, slide info)."""
    (work / "var").mkdir(parents=True, exist_ok=True)
    os.environ.update(app_env(work, debug=True))
    for key in ("HISTOIA_REQUIRE_REAL_STACK",):
        os.environ.pop(key, None)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections
    from django.test import Client

    from experiments.models import Experiment, Lab, Slide
    from experiments.tasks import validate_slide

    call_command("migrate", verbosity=0, interactive=False)
    # Staff: only staff get the view's X-Tile-Cache and Server-Timing headers this bench reads.
    user = get_user_model().objects.create_user("bench", password="bench-password-not-secret", is_staff=True)
    lab = Lab.objects.create(name="Bench lab")
    lab.members.add(user)
    experiment = Experiment.objects.create(name="Tile latency", lab=lab, created_by=user)
    info = {}
    for name, path in slides.items():
        target = work / "media" / "slides" / "bench" / f"{name}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
        slide = Slide.objects.create(experiment=experiment, original_name=path.name,
                                     file=str(target.relative_to(work / "media")))
        validate_slide(slide.pk)
        slide.refresh_from_db()
        if slide.status != Slide.Status.READY:
            raise SystemExit(f"{path} is not a readable slide: {slide.error}")
        info[name] = {"pk": slide.pk, "path": str(path), "width": slide.width, "height": slide.height,
                      "vendor": slide.vendor, "levels_in_file": slide.level_count,
                      "file_mb": round(path.stat().st_size / 1e6, 1)}
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    connections.close_all()
    return cookie, info


def start_server(work: Path, kind: str, port: int, workers: int, threads: int) -> tuple[subprocess.Popen, list[str]]:
    python = sys.executable
    if kind == "gunicorn":
        gunicorn = shutil.which("gunicorn", path=str(Path(python).parent)) or "gunicorn"
        cmd = [gunicorn, "histoia.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
               "--worker-class", "gthread", "--threads", str(threads), "--log-level", "warning",
               "--access-logfile", "-" if os.environ.get("BENCH_ACCESS_LOG") else "/dev/null"]
        env = app_env(work, debug=False)
    else:
        cmd = [python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--nostatic"]
        env = app_env(work, debug=True)
    log = open(work / f"server-{kind}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited; see {work / f'server-{kind}.log'}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return proc, cmd
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not answer within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- the simulated viewer session ---------------------------------------------------------------
def fetch(conn_factory, path: str, cookie: str):
    conn = conn_factory()
    started = time.perf_counter()
    conn.request("GET", path, headers={"Cookie": f"sessionid={cookie}", "Accept": "image/jpeg"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    timing = response.getheader("Server-Timing") or ""
    view_ms = float(timing.split("dur=", 1)[1]) if "dur=" in timing else float("nan")
    return response.status, response.getheader("X-Tile-Cache"), len(body), elapsed, body, view_ms


def dzi_info(port: int, cookie: str, pk: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, _, _, _, body, _ = fetch(lambda: conn, f"/experiments/slides/{pk}/slide.dzi", cookie)
    if status != 200:
        raise SystemExit(f"DZI answered {status}")
    root = ET.fromstring(body)
    ns = "{http://schemas.microsoft.com/deepzoom/2008}"
    size = root.find(f"{ns}Size")
    return {"width": int(size.get("Width")), "height": int(size.get("Height")),
            "tile": int(root.get("TileSize")), "overlap": int(root.get("Overlap")), "url": root.get("Url")}


def session_tiles(dzi: dict, limit: int, seed: int = 7) -> list[tuple[int, int, int]]:
    """Tiles a browser requests in a session: home view, then zooming in on random points."""
    w, h, ts = dzi["width"], dzi["height"], dzi["tile"]
    max_level = math.ceil(math.log2(max(w, h)))
    rng = random.Random(seed)
    seen, order = set(), []

    def view(level, cx, cy):
        scale = 2 ** (max_level - level)            # level-0 px per level px
        lw, lh = math.ceil(w / scale), math.ceil(h / scale)
        x0, y0 = cx / scale - VIEW_W / 2, cy / scale - VIEW_H / 2
        cols = range(max(0, int(x0 // ts)), min(math.ceil(lw / ts), int((x0 + VIEW_W) // ts) + 1))
        rows = range(max(0, int(y0 // ts)), min(math.ceil(lh / ts), int((y0 + VIEW_H) // ts) + 1))
        for r in rows:
            for c in cols:
                if (level, c, r) not in seen:
                    seen.add((level, c, r))
                    order.append((level, c, r))

    home = next(level for level in range(max_level, -1, -1)
                if math.ceil(w / 2 ** (max_level - level)) <= VIEW_W and math.ceil(h / 2 ** (max_level - level)) <= VIEW_H)
    for level in range(max(0, home - 3), home + 1):   # OpenSeadragon loads a few low levels first
        view(level, w / 2, h / 2)
    while len(order) < limit:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        before = len(order)
        for level in range(home + 1, max_level + 1):
            view(level, cx, cy)
        if len(order) == before:
            break
    return order[:limit]


def warm_up(port: int, cookie: str, pk: int, requests: int, concurrency: int) -> None:
    """What a viewer does first, on every connection: fetch the slide's DZI descriptor. Every
    server process has then imported its code and opened the slide (not measured)."""
    def one(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        fetch(lambda: conn, f"/experiments/slides/{pk}/slide.dzi", cookie)
        conn.close()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))


def run_pass(port: int, cookie: str, pk: int, tiles, concurrency: int, max_seconds: float) -> dict:
    local = threading.local()

    def conn():
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        return local.conn

    deadline = time.monotonic() + max_seconds
    results = []

    def one(tile):
        if time.monotonic() > deadline:
            return None
        level, col, row = tile
        path = f"/experiments/slides/{pk}/dzi/{level}/{col}_{row}.jpeg"
        try:
            status, cache, size, elapsed, _, view_ms = fetch(conn, path, cookie)
        except (OSError, http.client.HTTPException):  # keep-alive closed by the server: reconnect
            local.conn = None
            status, cache, size, elapsed, _, view_ms = fetch(conn, path, cookie)
        return status, cache, size, elapsed, view_ms

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for result in pool.map(one, tiles):
            if result is not None:
                results.append(result)
    wall = time.perf_counter() - started
    ms = np.array([r[3] * 1000 for r in results]) if results else np.array([float("nan")])
    statuses = {}
    for r in results:
        statuses[r[0]] = statuses.get(r[0], 0) + 1
    return {
        "requests": len(results), "of": len(tiles), "concurrency": concurrency, "wall_s": round(wall, 2),
        "per_s": round(len(results) / wall, 1) if wall else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "view_p50_ms": round(float(np.nanpercentile([r[4] for r in results], 50)), 1) if results else None,
        "view_p95_ms": round(float(np.nanpercentile([r[4] for r in results], 95)), 1) if results else None,
        "cache_hits": sum(1 for r in results if r[1] == "hit"), "statuses": statuses,
        "mean_kb": round(float(np.mean([r[2] for r in results])) / 1024, 1) if results else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Viewer tile latency (cold and cached) under a real server.")
    parser.add_argument("--slides", default="cmu,large", help="comma-separated: cmu, large (default both)")
    parser.add_argument("--large", type=Path, help="an existing large slide (default: generate one)")
    parser.add_argument("--size", type=int, default=40_000, help="side of the generated large slide (px)")
    parser.add_argument("--tiles", type=int, default=300, help="tiles per slide and pass (default 300)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel connections, like a browser (default 4)")
    parser.add_argument("--max-seconds", type=float, default=180, help="time bound per pass (default 180)")
    parser.add_argument("--server", choices=("gunicorn", "runserver"), default="gunicorn")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn workers (default: nproc)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (default 4)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away folder")
    args = parser.parse_args(argv)

    names = [s.strip() for s in args.slides.split(",") if s.strip()]
    slides = {}
    for name in names:
        if name == "cmu":
            slides["cmu"] = CMU_SLIDE
        elif name == "large":
            slides["large"] = args.large or make_large_slide.ensure(args.size)
        else:
            parser.error(f"unknown slide {name!r}")
    work = Path(tempfile.mkdtemp(prefix="histoia-tile-bench-"))
    command = " ".join([".venv/bin/python", "bench/tile_latency.py", *map(shlex.quote, sys.argv[1:])])
    report = {"command": command, "machine": machine(), "server": args.server, "slides": {},
              "load_before": [round(x, 2) for x in os.getloadavg()]}
    proc = None
    try:
        cookie, info = prepare_app(work, slides)
        port = benchstack.free_port()
        proc, server_cmd = start_server(work, args.server, port, args.workers, args.threads)
        report["server_command"] = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(server_cmd))
        for name, slide in info.items():
            dzi = dzi_info(port, cookie, slide["pk"])
            tiles = session_tiles(dzi, args.tiles)
            levels = sorted({t[0] for t in tiles})
            entry = {**slide, "tiles": len(tiles), "dz_levels_requested": f"{levels[0]}..{levels[-1]}"}
            warm_up(port, cookie, slide["pk"], 4 * max(args.workers, args.concurrency), args.concurrency)
            entry["cold"] = run_pass(port, cookie, slide["pk"], tiles, args.concurrency, args.max_seconds)
            entry["cached"] = run_pass(port, cookie, slide["pk"], tiles, args.concurrency, args.max_seconds)
            entry["cached_1conn"] = run_pass(port, cookie, slide["pk"], tiles, 1, args.max_seconds)
            report["slides"][name] = entry
    finally:
        if proc is not None:
            stop_server(proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    m = report["machine"]
    print(f"machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB RAM, Python {m['python']}, "
          f"OpenSlide {m['openslide']}")
    print(f"load average (1, 5, 15 min) before: {report['load_before']}, after: {report['load_after']} "
          "(other processes on the machine; the client runs on it too)")
    print(f"command: {report['command']}")
    print(f"server:  {report['server_command']}")
    print()
    print(f"{'slide':<7} {'pass':<13} {'conn':>4} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'req/s':>7} {'hits':>5} {'view p50/p95':>13}")
    for name, entry in report["slides"].items():
        for key in ("cold", "cached", "cached_1conn"):
            p = entry[key]
            print(f"{name:<7} {key:<13} {p['concurrency']:>4} {p['requests']:>5} {p['p50_ms']:>8} {p['p95_ms']:>8} "
                  f"{p['p99_ms']:>8} {p['max_ms']:>8} {p['per_s']:>7} {p['cache_hits']:>5} "
                  f"{p['view_p50_ms']:>6}/{p['view_p95_ms']:<6}")
        print(f"        {entry['width']} x {entry['height']} px, {entry['vendor']}, {entry['file_mb']} MB, "
              f"{entry['tiles']} tiles over Deep Zoom levels {entry['dz_levels_requested']}")
    print()
    for name, entry in report["slides"].items():
        p95 = entry["cached"]["p95_ms"]
        verdict = "meets" if p95 < TARGET_P95_MS else "misses"
        print(f"{name}: cached p95 {p95} ms {verdict} the {TARGET_P95_MS:.0f} ms target")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    bad = [n for n, e in report["slides"].items() for k in ("cold", "cached") if set(e[k]["statuses"]) != {200}]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
