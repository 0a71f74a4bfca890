"""Web latency under load while every worker process is busy: dashboard, prediction page, submit.

    .venv/bin/python bench/web_load.py                          # wrk, 20 connections, 15 s per endpoint
    .venv/bin/python bench/web_load.py --client python --seconds 10
    .venv/bin/python bench/web_load.py --stack real             # PostgreSQL + RabbitMQ (dedicated db/vhost)

A throw-away Histo-IA (bench/benchstack.py) run as in production: gunicorn with the image's
GUNICORN_CMD_ARGS (gthread, 4 threads, DEBUG off) and WEB_CONCURRENCY=--web-workers, a cpu
worker with one process per core (`-P prefork --concurrency=nproc`) and a gpu worker (solo),
all on loopback. Before measuring, long predictions saturate every worker process:
nuclei-density on the 40,000 px generated slide (224 cpu batches) and tissue-classifier on a
20,000 px generated slide (hundreds of gpu batches); the script waits until 2 cpu batches and
1 gpu batch are running (STARTED task rows) and checks again after each phase.

Then, one endpoint at a time, --connections concurrent clients (default 20) for --seconds:

- GET /predictions/dashboard/ and its live partial /predictions/dashboard/live/ (session cookie);
- GET /predictions/<id>/ of a finished prediction (figures, plots) and of the running one;
- POST /api/v1/predictions/ (Authorization: Token ...; JSON body: the experiment, ihc-dab, the
  small CMU slide), which creates a queued prediction per request: submissions per second;
- GET /predictions/dashboard/live/ again, now with every submitted prediction queued;
- paced, for --paced-seconds: --connections clients each polling the dashboard's live part every
  3 s, then a running prediction's progress every 2 s, as that many open pages do (the Python
  client: wrk cannot pace). The closed-loop phases measure how many requests per second the
  server takes; these, what people with the pages open see.

Each phase also prints where the CPU went per request (web, database, broker, workers, client,
and the whole machine's busy time), read from /proc before and after it.

Every phase runs with --queued predictions (default 1,000, two labs, ihc-dab on the CMU slide)
waiting behind the long ones, so the queue's cost shows in the pages.

The client is wrk (C, closed loop, --latency; a Lua script for the POST and for the JSON
summary) when installed (`apt-get install -y wrk`), else a bounded Python client (threads +
requests.Session). Target: p99 < 300 ms on every endpoint. The client runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import (  # noqa: E402
    CpuMeter, Stack, loadavg, machine, make_large_slide, percentile, pipeline_row, top_up, wait_final)

TARGET_P99_MS = 300.0

REPORT_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def lua_script(work: Path, name: str, method="GET", body=None, headers=None) -> Path:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    for k, v in (headers or {}).items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    path = work / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n" + REPORT_LUA)
    return path


def run_wrk(url, script: Path, connections: int, seconds: float, threads: int = 2) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "--latency",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(line.split(" ", 1)[1])
    secs = r["duration_us"] / 1e6
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
    return {"client": "wrk", "requests": r["requests"], "seconds": round(secs, 2),
            "per_s": round(r["requests"] / secs, 1), "p50_ms": round(r["p50_us"] / 1000, 1),
            "p90_ms": round(r["p90_us"] / 1000, 1), "p99_ms": round(r["p99_us"] / 1000, 1),
            "max_ms": round(r["max_us"] / 1000, 1), "errors": errors, "status_errors": r["status_errors"],
            "timeouts": r["timeouts"], "command": " ".join(cmd[:-3] + [Path(cmd[-2]).name, "URL"])}


def run_python(url, method, headers, body, connections: int, seconds: float, max_requests: int,
               every: float | None = None) -> dict:
    """Closed loop (each client sends its next request when the last is answered), or with
    `every`: each client sends one request every `every` seconds, as an open page's poll does
    (the clients' first requests spread over the first interval)."""
    import random

    import requests

    deadline = time.monotonic() + seconds
    lat, statuses, lock = [], {}, threading.Lock()
    count = [0]

    def client():
        s = requests.Session()
        next_at = time.monotonic() + (random.uniform(0, every) if every else 0)
        while time.monotonic() < deadline:
            if every:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + every, time.monotonic())
                if time.monotonic() >= deadline:
                    return
            with lock:
                if count[0] >= max_requests:
                    return
                count[0] += 1
            t = time.perf_counter()
            r = s.request(method, url, headers=headers, data=body, timeout=10)
            ms = (time.perf_counter() - t) * 1000
            with lock:
                lat.append(ms)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - started
    bad = sum(v for k, v in statuses.items() if k >= 400)
    return {"client": "python", "requests": len(lat), "seconds": round(secs, 2), "per_s": round(len(lat) / secs, 1),
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": round(max(lat), 1) if lat else None, "errors": bad, "status_errors": bad, "statuses": statuses}


def drain(base: str, headers: dict, path: str, limit: float = 60.0) -> float | None:
    """Wait until the server answers quickly again (requests left queued by the last phase are
    finished): several requests in a row for `path` (so that every gunicorn process is reached)
    each under 2 s. Returns the seconds waited, or None when it never did within `limit` (a
    wedged server)."""
    import requests

    started, fast = time.monotonic(), 0
    while time.monotonic() - started < limit:
        t = time.perf_counter()
        try:
            requests.get(base + path, headers=headers, timeout=10)
            fast = fast + 1 if time.perf_counter() - t < 2.0 else 0
        except requests.RequestException:
            fast = 0
        if fast >= 6:
            return round(time.monotonic() - started, 1)
    return None


def busy() -> dict:
    """Tile batches running now, per queue (task rows in STARTED state)."""
    from django_celery_results.models import TaskResult

    rows = TaskResult.objects.filter(status="STARTED", task_name__endswith="tile_batch").values_list("task_name", flat=True)
    out = {"cpu": 0, "gpu": 0}
    for name in rows:
        out["gpu" if ".gpu." in name else "cpu"] += 1
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Page and API latency with every worker busy.")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--queued", type=int, default=1000,
                        help="predictions waiting (two labs) while the pages are measured (default 1000)")
    parser.add_argument("--seconds", type=float, default=15, help="per endpoint (default 15, max 60)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-single", dest="single", action="store_false",
                        help="skip the second pass of the GET endpoints with one connection")
    parser.add_argument("--web-workers", type=int, default=os.cpu_count() or 2,
                        help="gunicorn WEB_CONCURRENCY (default nproc)")
    parser.add_argument("--cpu-concurrency", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--max-requests", type=int, default=5000, help="python client: bound per endpoint")
    parser.add_argument("--paced-seconds", type=float, default=45,
                        help="length of the paced phases (clients polling as open pages do; default 45)")
    parser.add_argument("--stack", choices=("embedded", "real"), default="embedded")
    parser.add_argument("--keep-dumps", type=Path, help="copy py-spy thread dumps of a wedged server here")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    args.seconds = max(3.0, min(60.0, args.seconds))
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"

    cpu_slide = make_large_slide.ensure(40_000)
    gpu_slide = make_large_slide.ensure(20_000)
    report = {"command": benchstack.command_line("web_load.py"), "machine": machine(), "client": client,
              "connections": args.connections, "seconds_per_endpoint": args.seconds, "phases": [],
              "load_start": loadavg()}
    stack = Stack("web", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        report["stack_description"] = stack.description
        from django.test import Client
        from rest_framework.authtoken.models import Token

        from predictions import engine
        from predictions.catalogue import register_demo_model
        from predictions.models import Prediction

        user, lab = stack.lab_user()
        experiment = stack.experiment(lab, user)
        big = stack.add_slide(experiment, cpu_slide)
        mid = stack.add_slide(experiment, gpu_slide)
        small = stack.add_slide(experiment, benchstack.CMU_SLIDE)
        register_demo_model(user)
        token = Token.objects.create(user=user).key
        c = Client()
        c.force_login(user)
        cookie = c.cookies["sessionid"].value

        report["workers"] = [" ".join(stack.start_worker("cpu", args.cpu_concurrency)[2:]),
                             " ".join(stack.start_worker("gpu", 1)[2:])]
        base, shown = stack.start_gunicorn(args.web_workers)
        report["server_command"] = shown

        # A finished prediction with figures (its page is the heavier one), then the load.
        finished = engine.submit(experiment, pipeline_row("ihc-dab"), [small], {}, user=user)
        wait_final(finished.pk, 300)
        long_cpu = engine.submit(experiment, pipeline_row("nuclei-density"), [big], {}, user=user)
        long_gpu = engine.submit(experiment, pipeline_row("tissue-classifier"), [mid], {}, user=user)
        deadline = time.monotonic() + 180
        while True:
            b = busy()
            if b["cpu"] >= args.cpu_concurrency and b["gpu"] >= 1:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"workers not saturated after 180 s: {b}")
            time.sleep(0.5)
        report["saturated_at_start"] = b
        if args.queued:
            # Waiting behind the long predictions, two labs taking turns, as submits leave them.
            other, other_lab = stack.lab_user("other", "Other lab")
            other_experiment = stack.experiment(other_lab, other, "Other")
            slides = {experiment.pk: small, other_experiment.pk: stack.add_slide(other_experiment, benchstack.CMU_SLIDE)}
            top_up(args.queued, [experiment, other_experiment], pipeline_row("ihc-dab"), slides)

        cookie_h = {"Cookie": f"sessionid={cookie}"}
        body = json.dumps({"experiment": experiment.pk, "pipeline": "ihc-dab", "slides": [small.pk]})
        api_h = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        gets = [
            ("dashboard", "GET", "/predictions/dashboard/", cookie_h, None),
            ("dashboard live", "GET", "/predictions/dashboard/live/", cookie_h, None),
            ("prediction page (finished)", "GET", f"/predictions/{finished.pk}/", cookie_h, None),
            ("prediction page (running)", "GET", f"/predictions/{long_cpu.pk}/", cookie_h, None),
        ]
        phases = list(gets)
        if args.single:
            # The same GET endpoints, one client at a time (no queueing behind other requests of ours).
            phases += [(f"{name} [1 conn]", m, pth, h, b) for name, m, pth, h, b in gets]
        # The same number of people, as they use the pages: each keeps one page open, whose live
        # part polls on its own (every 3 s for the dashboard, 2 s for a running prediction's
        # progress, as the templates' hx-trigger says). wrk cannot pace, so the Python client.
        paced = {f"dashboard live, {args.connections} open dashboards (every 3 s)": 3.0,
                 f"progress, {args.connections} open prediction pages (every 2 s)": 2.0}
        phases += [
            (list(paced)[0], "GET", "/predictions/dashboard/live/", cookie_h, None),
            (list(paced)[1], "GET", f"/predictions/{long_cpu.pk}/progress/", cookie_h, None),
        ]
        phases += [
            ("submit (API POST)", "POST", "/api/v1/predictions/", api_h, body),
            ("dashboard live, after submits", "GET", "/predictions/dashboard/live/", cookie_h, None),
        ]
        import requests

        report["wedged"] = []
        for name, method, path, headers, payload in phases:
            connections = 1 if name.endswith("[1 conn]") else args.connections
            waited = drain(base, cookie_h, f"/predictions/{finished.pk}/")
            if waited is None:
                # A gunicorn process no longer answers: record it, dump its threads, start a new server.
                prev = report["phases"][-1]["name"] if report["phases"] else "start"
                dump = stack.work / f"wedged-after-{len(report['phases'])}.txt"
                py_spy = Path(sys.executable).parent / "py-spy"
                if py_spy.exists():
                    kids = subprocess.run(["pgrep", "-P", str(stack.procs["gunicorn"].pid)], capture_output=True,
                                          text=True).stdout.split()
                    dump.write_text("\n".join(subprocess.run([str(py_spy), "dump", "-p", k], capture_output=True,
                                                             text=True).stdout for k in kids))
                    if args.keep_dumps:
                        shutil.copy(dump, args.keep_dumps / dump.name)
                report["wedged"].append({"after": prev, "dump": str(dump)})
                print(f"  !! the server stopped answering after '{prev}'; restarting gunicorn", flush=True)
                stack.stop("gunicorn")
                base, _ = stack.start_gunicorn(args.web_workers)
                waited = drain(base, cookie_h, f"/predictions/{finished.pk}/")
            check = requests.request(method, base + path, headers=headers, data=payload, timeout=120,
                                     allow_redirects=False)
            if check.status_code not in (200, 202):
                raise SystemExit(f"{name}: {method} {path} answered {check.status_code}: {check.text[:500]}")
            before = {"load": loadavg(), "busy": busy(),
                      "queued": Prediction.objects.filter(status="queued").count()}
            with CpuMeter(benchstack.cpu_parts(stack)) as cpu:
                if name in paced:
                    result = run_python(base + path, method, headers, payload, connections, args.paced_seconds,
                                        args.max_requests, every=paced[name])
                elif client == "wrk":
                    script = lua_script(stack.work, "".join(ch if ch.isalnum() else "_" for ch in name),
                                        method, payload, headers)
                    result = run_wrk(base + path, script, connections, args.seconds, threads=min(2, connections))
                else:
                    result = run_python(base + path, method, headers, payload, connections, args.seconds,
                                        args.max_requests)
            result.update({"cpu_ms_per_request": cpu.per_request_ms(result["requests"]),
                           "machine_busy": round(cpu.machine_busy, 3), "every_s": paced.get(name)})
            result.update({"name": name, "method": method, "path": path, "load_before": before["load"],
                           "connections": connections, "drained_s_before": waited,
                           "busy_before": before["busy"], "busy_after": busy(), "load_after": loadavg(),
                           "queued_predictions_before": before["queued"]})
            report["phases"].append(result)
            print(f"  {name:<52} p50 {result['p50_ms']:>7} ms  p99 {result['p99_ms']:>8} ms  {result['per_s']:>6}/s  "
                  f"errors {result['errors']}  busy {before['busy']} -> {result['busy_after']}  "
                  f"load {before['load']}", flush=True)
            print(f"  {'':<52} CPU ms per request: "
                  + ", ".join(f"{part} {ms}" for part, ms in result["cpu_ms_per_request"].items())
                  + f"; machine busy {cpu.machine_busy:.0%}", flush=True)
        report["submitted"] = Prediction.objects.filter(trigger="api").count()
        report["still_running"] = {str(p.pk): p.status for p in Prediction.objects.filter(pk__in=[long_cpu.pk, long_gpu.pk])}
        for p in (long_cpu, long_gpu):
            try:
                engine.cancel(Prediction.objects.get(pk=p.pk))
            except engine.CancelError:
                pass
    finally:
        stack.close()
    report["load_end"] = loadavg()

    benchstack.print_header("web latency with every worker busy", report)
    print(f"server:  {report['server_command']}")
    for w in report["workers"]:
        print(f"worker:  {w}")
    tool = report["phases"][0].get("command", "python threads + requests.Session")
    print(f"client:  {tool} ({args.connections} connections, {args.seconds:.0f} s per endpoint)")
    print(f"busy at start: {report['saturated_at_start']} tile batches running (cpu processes: {args.cpu_concurrency}, gpu: 1)")
    print()
    print(f"{'endpoint':<52} {'conn':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>6}  busy before/after  queued  load before")
    for p in report["phases"]:
        print(f"{p['name']:<52} {p['connections']:>4} {p['requests']:>8} {p['per_s']:>7} {p['p50_ms']:>8} {p['p90_ms']:>8} {p['p99_ms']:>8} "
              f"{p['max_ms']:>8} {p['errors']:>6}  {p['busy_before']['cpu']}+{p['busy_before']['gpu']} / "
              f"{p['busy_after']['cpu']}+{p['busy_after']['gpu']}        {p['queued_predictions_before']:>6}  {p['load_before']}")
    for w in report["wedged"]:
        print(f"WEDGED: a gunicorn process stopped answering after the phase '{w['after']}' (never recovered within "
              f"60 s; thread dump {w['dump']}); gunicorn was restarted before the next phase")
    submit = next(p for p in report["phases"] if p["method"] == "POST")
    print()
    print(f"submissions: {submit['per_s']}/s with {args.connections} clients ({report['submitted']} predictions "
          f"created, {submit['requests']} requests)")
    for kind, phases in (("back to back", [p for p in report["phases"] if not p.get("every_s")]),
                         ("paced as open pages", [p for p in report["phases"] if p.get("every_s")])):
        if not phases:
            continue
        worst = max(phases, key=lambda p: p["p99_ms"])
        ok = all(p["p99_ms"] < TARGET_P99_MS for p in phases)
        print(f"p99 target < {TARGET_P99_MS:.0f} ms, clients {kind}: {'met on every endpoint' if ok else 'missed'}; "
              f"worst: {worst['name']} p99 {worst['p99_ms']} ms")
    benchstack.dump(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
