"""What one submit costs as the queue grows: POST /api/v1/predictions/ with 0, 1,000 and 10,000
predictions waiting.

    .venv/bin/python bench/submit_cost.py                        # SQLite (throw-away)
    .venv/bin/python bench/submit_cost.py --stack real           # PostgreSQL (dedicated database histoia_bench)
    .venv/bin/python bench/submit_cost.py --queued 0 1000 10000 --requests 60

A throw-away database (bench/benchstack.py), no worker: the predictions stay queued. For each
size, bulk_create tops the queue up to --queued predictions (two labs, one slide run each, turns as
a submit gives them), then --requests submits are made in this process through DRF's APIClient
(token authentication, the JSON body of the API docs' example), after 5 warm-up submits. The
start message goes to the stack's broker after commit, as in production. Each request is timed
client-side (in-process: no HTTP server, no network), and its SQL queries counted with
django.test.utils.CaptureQueriesContext. The 202 answer carries the new prediction's queue
position and ETA, checked against a full plan of the queue made afterwards.

--history N first adds N finished predictions (two labs, over a year, each with a slide run of
10 tile batches), as a lab accumulates them: a submit must not grow with its history either, nor
the measure of a pipeline's rate that the ETAs use (timed and printed after the history is in).

Goal (#14): the time and the query count do not grow with the number of predictions waiting.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchstack import (Stack, add_profile_option, analyze, command_line, machine, percentile,  # noqa: E402
                        print_header, print_profile, top_up)


BATCHES_PER_RUN = 10


def add_history(count: int, experiments, pipeline, slides) -> None:
    """`count` succeeded predictions over the last year, turns rising as the labs took them, each
    with one slide run of BATCHES_PER_RUN tile batches."""
    from datetime import timedelta

    from django.db.models import F
    from django.utils import timezone

    from predictions.models import BatchResult, Prediction, SlideRun, Status

    now, params = timezone.now(), pipeline.code.parse_params({})
    for start in range(0, count, 5000):
        batch = []
        for i in range(start, min(count, start + 5000)):
            at = now - timedelta(days=365) + timedelta(seconds=i * 365 * 86400 / count)
            batch.append(Prediction(experiment=experiments[i % len(experiments)], pipeline=pipeline, params=params,
                                    status=Status.SUCCEEDED, started_at=at, finished_at=at,
                                    turn=i // len(experiments) + 1, done_units=2, total_units=2))
        created = Prediction.objects.bulk_create(batch)
        runs = SlideRun.objects.bulk_create([
            SlideRun(prediction=p, slide=slides[p.experiment_id], status=Status.SUCCEEDED, total_units=12,
                     slide_sha256=slides[p.experiment_id].sha256, started_at=p.started_at, finished_at=p.finished_at,
                     timings={"prepare_s": 2.0, "aggregate_s": 1.0}) for p in created])
        BatchResult.objects.bulk_create([
            BatchResult(run=run, index=i, rows=[], tiles=100, queue="cpu", worker="bench", seconds=2.0,
                        started_at=run.finished_at, finished_at=run.finished_at) for run in runs
            for i in range(BATCHES_PER_RUN)], batch_size=10_000)
    # created_at is set on insert (auto_now_add): spread it over the year afterwards.
    Prediction.objects.filter(status=Status.SUCCEEDED).update(created_at=F("started_at"))
    analyze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=["embedded", "real"], default="embedded")
    parser.add_argument("--queued", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--history", type=int, default=0, help="finished predictions added first (default 0)")
    parser.add_argument("--show-queries", action="store_true", help="print the SQL of the last submit of each size")
    add_profile_option(parser, "the timed submits of each size")
    args = parser.parse_args()

    stack = Stack("submit", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from rest_framework.authtoken.models import Token
        from rest_framework.test import APIClient

        from benchstack import pipeline_row
        from predictions import queueing

        user, experiments, slides = stack.two_labs()
        experiment, slide = experiments[0], slides[experiments[0].pk]
        pipeline = pipeline_row("ihc-dab")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        body = {"experiment": experiment.pk, "pipeline": "ihc-dab", "slides": [slide.pk]}

        report = {"machine": machine(), "stack_description": stack.description, "command": command_line("submit_cost.py"),
                  "sizes": []}
        print_header("Submit cost as the queue grows", report)
        print(f"{'queued':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'queries':>8}  position/ETA right")
        if args.history:
            add_history(args.history, experiments, pipeline, slides)
            report["history"] = args.history
            rate_ms = []
            for _ in range(5):
                started = time.perf_counter()
                queueing.throughput(pipeline, fresh=True)
                rate_ms.append((time.perf_counter() - started) * 1000)
            report["throughput_ms"] = round(percentile(rate_ms, 50), 1)
            print(f"history: {args.history} finished predictions, {args.history * BATCHES_PER_RUN} batches; "
                  f"measuring the pipeline's rate (queueing.throughput): {report['throughput_ms']} ms (median of 5)")
        for size in args.queued:
            top_up(size, experiments, pipeline, slides)
            times, queries, answers = [], [], []
            profiler = cProfile.Profile() if args.profile else None
            for i in range(args.requests + 5):
                with CaptureQueriesContext(connection) as captured:
                    if profiler and i >= 5:
                        profiler.enable()
                    started = time.perf_counter()
                    response = client.post("/api/v1/predictions/", body, format="json")
                    elapsed = time.perf_counter() - started
                    if profiler:
                        profiler.disable()
                assert response.status_code == 202, response.content
                if i >= 5:
                    times.append(elapsed * 1000)
                    queries.append(len(captured))
                    answers.append(response.json())
            if args.show_queries:
                for number, query in enumerate(captured.captured_queries, 1):
                    print(f"  {number:>2}. {query['time']:>6}s  {query['sql'][:160]}")
            if profiler:
                print_profile(profiler)
            plan = {e["pk"]: e for e in queueing.waiting(load=False)}
            right = sum(1 for a in answers[-5:] if plan.get(a["id"], {}).get("position") == a["queue_position"])
            row = {"queued": size, "p50_ms": round(percentile(times, 50), 1), "p90_ms": round(percentile(times, 90), 1),
                   "p99_ms": round(percentile(times, 99), 1), "queries": sorted(set(queries)),
                   "positions_right_of_last_5": right}
            report["sizes"].append(row)
            print(f"{size:>8} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['p99_ms']:>8} {str(row['queries']):>8}  {right}/5")
            # The submits of this round stay queued: the next size tops up from there.
    finally:
        stack.close()


if __name__ == "__main__":
    main()
