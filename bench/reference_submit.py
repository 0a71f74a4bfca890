"""Histo-IA's submit beside the smallest service that accepts work: throughput as a ratio of it.

    .venv/bin/python bench/reference_submit.py                     # embedded stack (SQLite, filesystem broker)
    .venv/bin/python bench/reference_submit.py --stack real        # PostgreSQL + RabbitMQ (dedicated db/vhost)
    .venv/bin/python bench/reference_submit.py --seconds 20 --connections 20

Two web services on one throw-away stack (bench/benchstack.py), both served by gunicorn with the
image's GUNICORN_CMD_ARGS (gthread, 4 threads) and --web-workers processes:

- Histo-IA: POST /api/v1/predictions/ (token authentication; JSON: the experiment, ihc-dab, the
  small CMU slide), which checks, writes its rows, answers 202 with position and ETA and sends
  its start message after commit (a worker dispatches);
- the reference (bench/reference_app.py): the same JSON body, one Celery task published on the
  same broker, 202 with the task id.

wrk (closed loop, --connections, --seconds per run) posts to each in turn, first with the workers
idle (none started: the queue only grows), then with them busy (a cpu worker with one process
per core and a gpu worker, working through the predictions the idle runs queued). Histo-IA's
predictions accumulate across the runs, as in a lab that submits a lot. Goal (#14): Histo-IA
>= 0.3 of the reference's submissions per second, p99 < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import CpuMeter, Stack, free_port, loadavg, machine  # noqa: E402
from web_load import busy, lua_script, run_wrk  # noqa: E402

GOAL_RATIO = 0.3
GOAL_P99_MS = 200.0


def start_reference(stack: Stack, workers: int) -> str:
    port = free_port()
    cmd, env = stack.gunicorn_command(port, workers)
    env["PYTHONPATH"] = str(benchstack.BENCH)
    # It answers anything but a POST with 405: up once it does.
    stack.start("reference", [cmd[0], "reference_app:application"], ready=lambda: benchstack.answers(port, "/", 405),
                timeout=60, env=env)
    return f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=("embedded", "real"), default="embedded")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--web-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install -y wrk)")

    report = {"command": benchstack.command_line("reference_submit.py"), "machine": machine(),
              "connections": args.connections, "seconds": args.seconds, "runs": []}
    stack = Stack("reference", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        report["stack_description"] = stack.description
        from rest_framework.authtoken.models import Token

        from predictions.catalogue import register_demo_model

        user, lab = stack.lab_user()
        experiment = stack.experiment(lab, user)
        small = stack.add_slide(experiment, benchstack.CMU_SLIDE)
        register_demo_model(user)
        token = Token.objects.create(user=user).key
        histoia, _ = stack.start_gunicorn(args.web_workers)
        reference = start_reference(stack, args.web_workers)
        body = {"experiment": experiment.pk, "pipeline": "ihc-dab", "slides": [small.pk]}
        scripts = {
            "Histo-IA": lua_script(stack.work, "histoia", "POST", json.dumps(body),
                                   {"Authorization": f"Token {token}", "Content-Type": "application/json"}),
            "reference": lua_script(stack.work, "reference", "POST", json.dumps(body),
                                    {"Content-Type": "application/json"}),
        }
        urls = {"Histo-IA": f"{histoia}/api/v1/predictions/", "reference": f"{reference}/submit"}

        def measure(workers_state: str) -> None:
            results = {}
            for name in ("reference", "Histo-IA"):
                web = "reference" if name == "reference" else "gunicorn"
                with CpuMeter(benchstack.cpu_parts(stack, web=web)) as cpu:
                    r = run_wrk(urls[name], scripts[name], args.connections, args.seconds)
                r.update(service=name, workers=workers_state, load=loadavg(),
                         cpu_ms_per_request=cpu.per_request_ms(r["requests"]),
                         machine_busy=round(cpu.machine_busy, 3))
                results[name] = r
                report["runs"].append(r)
                print(f"  {workers_state:5} {name:10} {r['per_s']:8.1f}/s  p50 {r['p50_ms']:6.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)
                print(f"  {'':5} {'':10} CPU ms per request: "
                      + ", ".join(f"{part} {ms}" for part, ms in r["cpu_ms_per_request"].items())
                      + f"; machine busy {cpu.machine_busy:.0%}", flush=True)
            ratio = results["Histo-IA"]["per_s"] / results["reference"]["per_s"]
            met = ratio >= GOAL_RATIO and results["Histo-IA"]["p99_ms"] < GOAL_P99_MS
            report["runs"][-1]["ratio"] = round(ratio, 2)
            print(f"  {workers_state:5} ratio {ratio:.2f} of the reference "
                  f"(goal >= {GOAL_RATIO}, p99 < {GOAL_P99_MS:.0f} ms: {'met' if met else 'NOT met'})", flush=True)

        benchstack.print_header("Submit throughput beside the reference service", report)
        print(f"client:  wrk, {args.connections} connections, {args.seconds} s per run")
        measure("idle")

        # Busy: the workers start on the predictions the idle runs queued (ihc-dab on the CMU slide).
        stack.start_worker("cpu", os.cpu_count() or 2)
        stack.start_worker("gpu", 1)
        deadline = time.monotonic() + 180
        while (b := busy())["cpu"] < 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers not busy after 180 s: {b}; logs in {stack.work}")
            time.sleep(0.2)
        report["busy_at_start"] = b
        measure("busy")
        report["busy_at_end"] = busy()
        print(f"  tile batches running at the start / end of the busy runs: {report['busy_at_start']} / "
              f"{report['busy_at_end']}")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
