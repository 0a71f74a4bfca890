"""What one page costs the web process, in-process, with a long queue: the dashboard, its live
part, a running prediction's page and the API's queue, with 0, 1,000 and 10,000 predictions waiting.

    .venv/bin/python bench/page_cost.py                           # SQLite (throw-away)
    .venv/bin/python bench/page_cost.py --stack real              # PostgreSQL (dedicated database histoia_bench)
    .venv/bin/python bench/page_cost.py --queued 0 1000 10000 --requests 60 --profile

A throw-away database (bench/benchstack.py), no worker. Two labs; the viewer belongs to one. Two
predictions are running (one per lab, a slide run each, half done) and --queued wait behind them
(bulk-created, turns as submits give them). Each page is requested --requests times after 5
warm-up requests through Django's test client (a logged-in session; no HTTP server, no network),
timed client-side, its SQL queries counted. This is the CPU a page costs one web process: what
20 clients at once make of it on a small machine is bench/web_load.py's business.

Goal (#14): a page's cost does not grow with the queue; pages under p99 300 ms at 20 clients.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchstack import (Stack, add_profile_option, command_line, machine, percentile,  # noqa: E402
                        print_header, print_profile, top_up)

def start_running(experiments, pipeline, slides) -> list[int]:
    """One running prediction per experiment, its slide run prepared and half done."""
    from django.utils import timezone

    from predictions.models import Prediction, SlideRun, Status

    ids = []
    for experiment in experiments:
        prediction = Prediction.objects.create(experiment=experiment, pipeline=pipeline, status=Status.RUNNING,
                                               params=pipeline.code.parse_params({}), started_at=timezone.now(),
                                               total_units=102, done_units=51)
        SlideRun.objects.create(prediction=prediction, slide=slides[experiment.pk], status=Status.RUNNING,
                                slide_sha256=slides[experiment.pk].sha256, started_at=timezone.now(),
                                total_units=102, done_units=51, batch_count=10, batches_sent=6)
        ids.append(prediction.pk)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=["embedded", "real"], default="embedded")
    parser.add_argument("--queued", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--keep", action="store_true")
    add_profile_option(parser, "each page at each size")
    args = parser.parse_args()

    stack = Stack("pages", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        from benchstack import pipeline_row
        from predictions import queueing

        user, experiments, slides = stack.two_labs()
        pipeline = pipeline_row("ihc-dab")
        running = start_running(experiments, pipeline, slides)
        client = Client()
        client.force_login(user)
        pages = {"dashboard": "/predictions/dashboard/", "dashboard, live part": "/predictions/dashboard/live/",
                 "prediction page, running": f"/predictions/{running[0]}/", "API queue": "/api/v1/queue/"}

        report = {"machine": machine(), "stack_description": stack.description, "command": command_line("page_cost.py"),
                  "sizes": []}
        print_header("Page cost as the queue grows (in-process)", report)
        print(f"{'waiting':>8}  {'page':<26} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'queries':>8}")
        for size in args.queued:
            top_up(size, experiments, pipeline, slides)
            queueing.forget_recent_plan()
            plans = []
            for _ in range(5):
                started = time.perf_counter()
                queueing.waiting(load=False)     # a plan made now, as every PLAN_SECONDS in each process
                plans.append((time.perf_counter() - started) * 1000)
            report.setdefault("full_plan_ms", {})[size] = round(percentile(plans, 50), 1)
            print(f"{size:>8}  {'(the queue planned in full)':<26} {percentile(plans, 50):>8.1f}")
            for name, url in pages.items():
                times, queries = [], []
                profiler = cProfile.Profile() if args.profile else None
                for i in range(args.requests + 5):
                    with CaptureQueriesContext(connection) as captured:
                        if profiler and i >= 5:
                            profiler.enable()
                        started = time.perf_counter()
                        response = client.get(url)
                        elapsed = time.perf_counter() - started
                        if profiler:
                            profiler.disable()
                    assert response.status_code == 200, (url, response.status_code)
                    if i >= 5:
                        times.append(elapsed * 1000)
                        queries.append(len(captured))
                row = {"waiting": size, "page": name, "p50_ms": round(percentile(times, 50), 1),
                       "p90_ms": round(percentile(times, 90), 1), "p99_ms": round(percentile(times, 99), 1),
                       "queries": sorted(set(queries))}
                report["sizes"].append(row)
                print(f"{size:>8}  {name:<26} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['p99_ms']:>8} "
                      f"{str(row['queries']):>8}")
                if profiler:
                    print_profile(profiler)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
