"""Platform overhead: one slide through Histo-IA (submit -> succeeded) vs the same pipeline code in a loop.

    .venv/bin/python bench/overhead.py                                  # ihc-dab on a 20,000 px generated slide
    .venv/bin/python bench/overhead.py --pipeline nuclei-density --size 12000 --rounds 2
    .venv/bin/python bench/overhead.py --stack real                     # PostgreSQL + RabbitMQ (dedicated db/vhost)

Histo-IA side: a throw-away instance (bench/benchstack.py) with ONE real cpu worker process
(`celery worker -Q cpu -P prefork --concurrency=1`, DEBUG off), the prediction submitted with
predictions.engine.submit (default parameters), wall time from just before submit to the
prediction's finished_at (its own row, written by the worker when the last slide is aggregated).

Plain side: in this process (with the worker's malloc limits, histoia/malloc.py), the same
pipeline object from the registry, on the same slide file:
Pipeline.prepare -> process_tiles for each batch of the same Plan (same batch size) ->
Pipeline.aggregate, with one SlideReader open for the whole loop; nothing stored.

Ratio = Histo-IA / plain (target <= 1.05). Runs alternate (plain, Histo-IA, Histo-IA, plain, ...)
so that a change of machine load during the benchmark does not favour one side. The figures
(slide metrics) and every per-tile row of both runs are compared and must be identical.
A warm-up prediction on the small CMU slide runs first on both sides (not timed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import Stack, batch_phases, loadavg, machine, make_large_slide, pipeline_row, wait_final  # noqa: E402

TARGET = 1.05


def plain_loop(code, path: Path, params: dict) -> tuple[float, dict, list[dict]]:
    from experiments.slide_files import SlideReader

    started, cpu = time.perf_counter(), time.process_time()
    with SlideReader(str(path)) as reader:
        prepared = code.prepare(reader, params, None)
        plan = prepared.plan
        rows: list[dict] = []
        for batch in plan.batches():
            rows += code.process_tiles(reader, prepared, batch, params, None)
    outcome = code.aggregate(prepared, rows, params, None)
    elapsed = time.perf_counter() - started
    return elapsed, time.process_time() - cpu, outcome.metrics, rows


def through_histoia(stack, experiment, row, slide, user, timeout: float) -> tuple[float, float, float, int]:
    from predictions import engine

    cpu = stack.cpu_seconds()
    before = time.time()
    prediction = engine.submit(experiment, row, [slide], {}, user=user)
    done, polled = wait_final(prediction.pk, timeout)
    if done.status != "succeeded":
        raise SystemExit(f"prediction #{done.pk} ended {done.status}: {done.error}")
    return done.finished_at.timestamp() - before, polled, stack.cpu_seconds() - cpu, prediction.pk


def histoia_output(prediction_id: int) -> tuple[dict, list[dict]]:
    from predictions.models import BatchResult, SlideRun

    run = SlideRun.objects.get(prediction_id=prediction_id)
    rows = [r for b in BatchResult.objects.filter(run=run).order_by("index") for r in b.rows]
    return run.metrics, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Histo-IA vs a plain loop of the same pipeline code.")
    parser.add_argument("--pipeline", default="ihc-dab", choices=("ihc-dab", "nuclei-density"))
    parser.add_argument("--size", type=int, default=20_000,
                        help="side of the generated slide (make_large_slide.py; default 20000)")
    parser.add_argument("--slide", type=Path, help="an existing slide instead of the generated one")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (default 1; max 4)")
    parser.add_argument("--stack", choices=("embedded", "real"), default="embedded")
    parser.add_argument("--max-seconds", type=float, default=600, help="time bound of one run (default 600)")
    parser.add_argument("--warm-large", action="store_true",
                        help="also run the plain loop once on the large slide before timing (page cache)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the throw-away folder")
    args = parser.parse_args(argv)
    args.rounds = max(1, min(4, args.rounds))

    slide_path = args.slide or make_large_slide.ensure(args.size)
    report = {"command": benchstack.command_line("overhead.py"), "machine": machine(), "pipeline": args.pipeline,
              "slide": str(slide_path), "runs": [], "load_start": loadavg()}
    stack = Stack("overhead", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        report["stack_description"] = stack.description

        user, experiment, slide, warm = stack.benchmark_slides(slide_path)
        row = pipeline_row(args.pipeline)
        code = row.code
        params = code.parse_params({})
        report["worker_command"] = " ".join(stack.start_worker("cpu", 1)[2:])
        report["plain_loop_memory"] = benchstack.same_memory_as_workers()   # the plain loop runs here
        report["slide_info"] = {"width": slide.width, "height": slide.height, "vendor": slide.vendor,
                                "mpp": slide.mpp}

        # Warm-up, not timed: imports, lazy loaders, the worker's first task, OpenSlide caches.
        plain_loop(code, benchstack.CMU_SLIDE, params)
        plain_loop(code, slide_path, params) if args.warm_large else None
        through_histoia(stack, experiment, row, warm, user, args.max_seconds)

        order = []
        for i in range(args.rounds):
            order += ["plain", "histoia"] if i % 2 == 0 else ["histoia", "plain"]
        reference = None
        for side in order:
            load = loadavg()
            if side == "plain":
                seconds, cpu, metrics, rows = plain_loop(code, slide_path, params)
                entry = {"side": "plain", "seconds": round(seconds, 3), "cpu_s": round(cpu, 2), "load_before": load}
                out = json.loads(json.dumps({"metrics": metrics, "rows": rows}))
            else:
                seconds, polled, cpu, pk = through_histoia(stack, experiment, row, slide, user, args.max_seconds)
                metrics, rows = histoia_output(pk)
                entry = {"side": "histoia", "seconds": round(seconds, 3), "cpu_s": round(cpu, 2),
                         "polled_seconds": round(polled, 3),
                         "prediction": pk, "load_before": load, "phases": batch_phases(pk)}
                out = {"metrics": metrics, "rows": rows}
            entry["tiles"] = len(out["rows"])
            entry["load_after"] = loadavg()
            if reference is None:
                reference = out
            entry["identical_metrics"] = out["metrics"] == reference["metrics"]
            entry["identical_rows"] = out["rows"] == reference["rows"]
            report["runs"].append(entry)
            print(f"  {side:<8} {seconds:8.2f} s  cpu {entry['cpu_s']:7.2f} s  tiles {entry['tiles']}  load {load} -> {entry['load_after']}",
                  flush=True)
        report["metrics"] = reference["metrics"]
    finally:
        stack.close()

    plain = [r["seconds"] for r in report["runs"] if r["side"] == "plain"]
    hist = [r["seconds"] for r in report["runs"] if r["side"] == "histoia"]
    report["plain_s"] = round(sum(plain) / len(plain), 3)
    report["histoia_s"] = round(sum(hist) / len(hist), 3)
    report["ratio"] = round(report["histoia_s"] / report["plain_s"], 4)
    report["ratios_per_round"] = [round(h / p, 4) for h, p in zip(hist, plain)]
    pc = [r["cpu_s"] for r in report["runs"] if r["side"] == "plain"]
    hc = [r["cpu_s"] for r in report["runs"] if r["side"] == "histoia"]
    report["plain_cpu_s"], report["histoia_cpu_s"] = round(sum(pc) / len(pc), 2), round(sum(hc) / len(hc), 2)
    report["cpu_ratio"] = round(report["histoia_cpu_s"] / report["plain_cpu_s"], 4)
    report["identical"] = all(r["identical_metrics"] and r["identical_rows"] for r in report["runs"])
    report["load_end"] = loadavg()

    benchstack.print_header("platform overhead", report)
    print(f"worker:  {report['worker_command']}")
    print(f"memory:  worker and plain loop alike: {report['plain_loop_memory']}")
    si = report["slide_info"]
    print(f"slide:   {report['slide']} ({si['width']} x {si['height']} px, {si['vendor']}, mpp {si['mpp']})")
    print(f"pipeline {args.pipeline}, default parameters, {report['runs'][0]['tiles']} tiles")
    print()
    print(f"{'run':<4} {'side':<8} {'seconds':>9} {'cpu s':>8} {'identical':>9}  load before -> after")
    for i, r in enumerate(report["runs"], 1):
        print(f"{i:<4} {r['side']:<8} {r['seconds']:>9.2f} {r['cpu_s']:>8.2f} "
              f"{str(r['identical_metrics'] and r['identical_rows']):>9}  {r['load_before']} -> {r['load_after']}")
    for r in report["runs"]:
        if r["side"] == "histoia":
            ph = r["phases"]
            t = ph["run_timings"][0]
            print(f"  Histo-IA #{r['prediction']}: submit->first batch {ph.get('submit_to_first_batch_s')} s "
                  f"(prepare {t.get('prepare_s')} s), tile phase {ph.get('tile_phase_s')} s of which inside "
                  f"process_tiles+store {ph['batch_seconds_sum']} s over {ph['batches']} batches, last batch->"
                  f"finished {ph.get('last_batch_to_finished_s')} s (aggregate {t.get('aggregate_s')} s)")
    print()
    verdict = "meets" if report["ratio"] <= TARGET else "misses"
    print(f"plain loop {report['plain_s']:.2f} s, Histo-IA {report['histoia_s']:.2f} s: ratio {report['ratio']:.3f} "
          f"({verdict} the <= {TARGET} target); figures and tile rows identical: {report['identical']}")
    print(f"CPU time (worker processes vs this process): plain {report['plain_cpu_s']:.2f} s, Histo-IA "
          f"{report['histoia_cpu_s']:.2f} s: ratio {report['cpu_ratio']:.3f} (less sensitive to other load)")
    print(f"metrics: {json.dumps(report['metrics'])}")
    benchstack.dump(args.json, report)
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
