"""ETA accuracy: does each prediction end when the queue said it would, in the order it showed?

    .venv/bin/python bench/eta_accuracy.py                 # embedded stack, as `make run`
    .venv/bin/python bench/eta_accuracy.py --stack real    # PostgreSQL + RabbitMQ

A throw-away Histo-IA (bench/benchstack.py) with the workers `make run` starts: a cpu worker of
2 processes and a gpu worker (solo, one task at a time; on this machine it runs on the CPU).
Every pipeline first runs once on the small CMU slide and once on a generated 8,000 px slide, so
that the estimates have measured history, as on any server that has been used for a day. Then a
mix is submitted back to back, as two labs would (their own experiments and slides):

    lab A  nuclei-density     CMU + 8,000 px
    lab B  ihc-dab            12,000 px         urgent
    lab A  tissue-classifier  8,000 px          gpu queue (only with --gpu)
    lab B  nuclei-density     CMU
    lab A  ihc-dab            8,000 px + CMU
    lab B  tissue-area        12,000 px
    lab A  nuclei-density     12,000 px
    lab B  tissue-classifier  12,000 px         gpu queue (only with --gpu)

The gpu-queue predictions are in the mix by default only where nvidia-smi finds a GPU: without
one the "gpu" worker runs torch on the same cores as the cpu workers, the two queues are no
longer separate resources, and each slows the other in a way no per-queue estimate can know
(--gpu runs them anyway, to show that).

Submitted alternately, so that under the policy (urgent first, labs take turns) each submit
comes after those before it and no later submit pushes an earlier one back: the ETA given at
submit is a promise that nothing later changes. For each prediction it records the ETA of the
submit answer (the API's 202 body, queueing.entry) and when it actually ended, and checks:

- goal: |actual - ETA| <= max(20 % of the ETA, 10 s) for every prediction;
- order: on each queue, predictions end in the order the queue showed once all were submitted.

Figures are wall-clock seconds from each submit; the machine must be otherwise quiet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import CMU_SLIDE, Stack, loadavg, machine, make_large_slide, pipeline_row, wait_final  # noqa: E402

TOLERANCE, FLOOR_SECONDS = 0.20, 10.0
MIX = [  # (lab, pipeline, slides, urgent)
    ("A", "nuclei-density", ("cmu", "8k"), False),
    ("B", "ihc-dab", ("12k",), True),
    ("A", "tissue-classifier", ("8k",), False),
    ("B", "nuclei-density", ("cmu",), False),
    ("A", "ihc-dab", ("8k", "cmu"), False),
    ("B", "tissue-area", ("12k",), False),
    ("A", "nuclei-density", ("12k",), False),
    ("B", "tissue-classifier", ("12k",), False),
]
GPU_PIPELINES = {"tissue-classifier"}
WARM_UP = [("cmu",), ("8k",)]


def within(actual: float, eta: float) -> bool:
    return abs(actual - eta) <= max(TOLERANCE * eta, FLOOR_SECONDS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="ETA at submit against the actual end, for a mix of predictions.")
    parser.add_argument("--stack", choices=("embedded", "real"), default="embedded")
    parser.add_argument("--cpu-concurrency", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=1200, help="time bound of the whole mix")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="include the gpu-queue predictions (default: when a GPU is found)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    files = {"cmu": CMU_SLIDE, "8k": make_large_slide.ensure(8_000), "12k": make_large_slide.ensure(12_000)}
    report = {"command": benchstack.command_line("eta_accuracy.py"), "machine": machine(), "rows": [],
              "load_start": loadavg()}
    with_gpu = args.gpu if args.gpu is not None else report["machine"]["gpu"] != "none"
    mix = [m for m in MIX if with_gpu or m[1] not in GPU_PIPELINES]
    stack = Stack("eta", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        report["stack_description"] = stack.description
        from predictions import queueing, services
        from predictions.catalogue import register_demo_model
        from predictions.models import Prediction

        # One experiment per lab and slide set (a prediction's slides belong to one experiment).
        sets = {tuple(sorted(names)) for _, _, names, _ in mix} | {tuple(sorted(n)) for n in WARM_UP}
        users, experiments = {}, {}
        for key in ("A", "B"):
            user, lab = stack.lab_user(username=f"bench-{key}", lab_name=f"Lab {key}")
            lab.managers.add(user)   # the mix has an urgent prediction: a lab manager's call
            users[key] = user
            for names in sets:
                experiment = stack.experiment(lab, user, f"{key} {'+'.join(names)}")
                experiments[key, names] = [stack.add_slide(experiment, files[n]) for n in names]
        if with_gpu:
            register_demo_model(users["A"])
        report["workers"] = [" ".join(stack.start_worker("cpu", args.cpu_concurrency)[2:])]
        if with_gpu:
            report["workers"].append(" ".join(stack.start_worker("gpu", 1)[2:]))

        def submit(key, pipeline, names, urgent=False):
            slides = experiments[key, tuple(sorted(names))]
            priority = Prediction.Priority.URGENT if urgent else Prediction.Priority.NORMAL
            return services.submit_prediction(slides[0].experiment, pipeline_row(pipeline), slides, {},
                                              user=users[key], priority=priority)

        print("warming up (history for every pipeline)...", flush=True)
        for pipeline in sorted({p for _, p, _, _ in mix}):
            for names in WARM_UP:
                done, _ = wait_final(submit("A", pipeline, names).pk, args.max_seconds, poll=0.5)
                if done.status != "succeeded":
                    raise SystemExit(f"warm-up {pipeline} ended {done.status}: {done.error}")
        time.sleep(queueing.CACHE_SECONDS)   # the throughput cache now holds the warm-up's history

        report["load_mix"] = loadavg()
        submitted = []
        for key, pipeline, names, urgent in mix:
            prediction = submit(key, pipeline, names, urgent)
            at = time.time()
            entry = queueing.entry(prediction.pk)
            submitted.append({"pk": prediction.pk, "lab": key, "pipeline": pipeline, "slides": "+".join(names),
                              "urgent": urgent, "submitted": at, "eta": entry["eta_seconds"],
                              "queue": entry["queue"], "position": entry["position"]})
        shown = [e["pk"] for e in queueing.waiting(load=False)]
        deadline = time.monotonic() + args.max_seconds
        for row in submitted:
            done, _ = wait_final(row["pk"], max(1.0, deadline - time.monotonic()), poll=0.2)
            row["status"] = done.status
            row["actual"] = round(done.finished_at.timestamp() - row["submitted"], 1)
            row["ok"] = done.status == "succeeded" and within(row["actual"], row["eta"])
            row["shown_rank"] = shown.index(row["pk"]) if row["pk"] in shown else -1
            row["finished_at"] = done.finished_at.timestamp()
        order_ok = {}
        for queue in sorted({r["queue"] for r in submitted}):
            on_queue = [r for r in submitted if r["queue"] == queue]
            by_shown = [r["pk"] for r in sorted(on_queue, key=lambda r: r["shown_rank"])]
            by_end = [r["pk"] for r in sorted(on_queue, key=lambda r: r["finished_at"])]
            order_ok[queue] = by_shown == by_end
        report.update(rows=submitted, order_ok=order_ok, load_end=loadavg(),
                      all_within=all(r["ok"] for r in submitted))
    finally:
        stack.close()

    benchstack.print_header("ETA at submit against the actual end", report)
    print(f"workers: {'; '.join(report.get('workers', []))}")
    print(f"load average: start {report['load_start']}, mix {report.get('load_mix')}, end {report.get('load_end')}")
    print()
    print("| # | lab | pipeline | slides | queue | position | ETA s | actual s | error | within goal |")
    print("| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for i, r in enumerate(report["rows"], 1):
        error = (r["actual"] - r["eta"]) / r["eta"] * 100 if r["eta"] else float("nan")
        name = r["pipeline"] + (" (urgent)" if r["urgent"] else "")
        print(f"| {i} | {r['lab']} | {name} | {r['slides']} | {r['queue']} | {r['position']} | {r['eta']} | "
              f"{r['actual']} | {error:+.0f} % | {'yes' if r['ok'] else 'NO'} |")
    print()
    for queue, ok in report["order_ok"].items():
        print(f"{queue}: predictions ended in the order shown: {'yes' if ok else 'NO'}")
    print(f"every prediction within max(±{TOLERANCE:.0%}, ±{FLOOR_SECONDS:g} s) of its ETA at submit: "
          f"{'yes' if report['all_within'] else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["all_within"] and all(report["order_ok"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
