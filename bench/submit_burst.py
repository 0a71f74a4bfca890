"""Running work during a burst of submits: do tile batches keep running while a script submits
hundreds of predictions at once?

    .venv/bin/python bench/submit_burst.py --stack real                 # PostgreSQL + RabbitMQ
    .venv/bin/python bench/submit_burst.py --stack real --submits 300

A throw-away stack (bench/benchstack.py) with a cpu worker of one process per core. One long
prediction (ihc-dab on the 40,000 px generated slide: short tile batches, so a stall between
them shows) keeps every process busy; once its tile batches run on every process, --submits
predictions (ihc-dab on the CMU slide, queued behind it) are submitted back to back through the
submit's own code (engine.submit, as POST /api/v1/predictions/ calls it), in a thread of their
own. Every --sample seconds, for --before seconds before the burst and --window seconds from its
start (the burst included), the script counts the tile batches running (STARTED task rows).

What a lab expects: the running prediction goes on at its pace. Printed: the mean number of
processes running a tile batch before and after, the longest time with none running, and how
long the burst's start messages took to be consumed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import Stack, loadavg, machine, make_large_slide, pipeline_row  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", choices=("embedded", "real"), default="real")
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured from the burst's start")
    parser.add_argument("--before", type=float, default=20.0, help="seconds measured before it")
    parser.add_argument("--sample", type=float, default=0.25)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    slide_path = make_large_slide.ensure(40_000)
    stack = Stack("burst", args.stack, keep=args.keep)
    report = {"command": benchstack.command_line("submit_burst.py"), "machine": machine()}
    try:
        stack.setup_django()
        report["stack_description"] = stack.description
        from django_celery_results.models import TaskResult

        from predictions import engine
        from predictions.models import Prediction, Status

        user, experiments, slides = stack.two_labs()
        experiment = experiments[0]
        big = stack.add_slide(experiment, slide_path)
        processes = os.cpu_count() or 2
        stack.start_worker("cpu", processes)
        long = engine.submit(experiment, pipeline_row("ihc-dab"), [big], {}, user=user)

        def running() -> int:
            return TaskResult.objects.filter(status="STARTED", task_name__endswith="tile_batch").count()

        def starts_left() -> int:
            return TaskResult.objects.filter(status="PENDING", task_name="predictions.cpu.start_prediction",
                                             task_id__in=[engine.start_task_id(p) for p in burst]).count()

        deadline = time.monotonic() + 300
        while running() < processes:
            if time.monotonic() > deadline:
                raise SystemExit(f"the long prediction's batches never filled the workers; logs in {stack.work}")
            time.sleep(0.2)

        def sample(seconds: float) -> list[tuple[float, int]]:
            samples, began = [], time.monotonic()
            while (at := time.monotonic() - began) < seconds:
                samples.append((at, running()))
                time.sleep(args.sample)
            return samples

        before = sample(args.before)
        benchstack.print_header("Running work during a burst of submits", report)
        print(f"workers: a cpu worker of {processes} processes; the long prediction: ihc-dab, "
              f"{slide_path.name}; burst: {args.submits} x ihc-dab on the CMU slide, back to back")
        pipeline, slide = pipeline_row("ihc-dab"), slides[experiment.pk]
        burst, burst_s = [], []

        def submit_all() -> None:
            # In its own thread (and database connection): the sampling goes on during the burst.
            from django.db import connection

            began = time.monotonic()
            try:
                for _ in range(args.submits):
                    burst.append(engine.submit(experiment, pipeline, [slide], {}, user=user))
            finally:
                burst_s.append(time.monotonic() - began)
                connection.close()

        burst_start = time.monotonic()
        submitter = threading.Thread(target=submit_all)
        submitter.start()
        after, starts_done_s = [], None
        while (at := time.monotonic() - burst_start) < args.window:
            after.append((at, running()))
            if starts_done_s is None and not submitter.is_alive() and starts_left() == 0:
                starts_done_s = at
            time.sleep(args.sample)
        submitter.join()
        if len(burst) < args.submits:
            raise SystemExit(f"the burst stopped after {len(burst)} submits; see the traceback above")
        burst_s = burst_s[0]
        longest, idle_since = 0.0, None
        for at, count in after:
            if count:
                idle_since = None
            else:
                idle_since = at if idle_since is None else idle_since
                longest = max(longest, at - idle_since + args.sample)
        print(f"load average: {loadavg()}")
        print(f"burst: {args.submits} submits in {burst_s:.1f} s")
        mean = [sum(c for _, c in samples) / max(1, len(samples)) for samples in (before, after)]
        print(f"processes running a tile batch, mean: {mean[0]:.2f} in the {args.before:.0f} s before, "
              f"{mean[1]:.2f} in the {args.window:.0f} s from the burst's start (of {processes})")
        print(f"longest time with no tile batch running after the burst: {longest:.1f} s (sampled every "
              f"{args.sample} s; {sum(1 for _, c in after if c == 0)} of {len(after)} samples with none)")
        print("start messages consumed: " + (f"{starts_done_s:.1f} s after the burst's start" if starts_done_s is not None
                                             else f"not all within {args.window:.0f} s ({starts_left()} left)"))
        still = Prediction.objects.filter(status=Status.QUEUED).count()
        print(f"predictions waiting at the end: {still}")
        engine.cancel(Prediction.objects.get(pk=long.pk))
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
