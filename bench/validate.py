"""Validation: every pipeline on slides with known content, through the real queues, against the truth.

    .venv/bin/python bench/validate.py                      # the full set (14 synthetic slides + CMU)
    .venv/bin/python bench/validate.py --fast               # the CI subset (8 synthetic slides + CMU)
    .venv/bin/python bench/validate.py --markdown /tmp/validation.md

1. The validation set of predictions/imaging/synthetic.py is generated into a throw-away folder
   (the "lab share", SLIDE_IMPORT_ROOT), with a copy of the shared real H&E slide
   ../shared/data/slides/cmu-1-small-region.svs (no ground truth: only the "no DAB on H&E" and
   the tiling checks apply to it).
2. A throw-away stack (bench/benchstack.py; `--stack real` by default: PostgreSQL and RabbitMQ,
   on a database and a vhost of its own, `histoia_validation` / `histoia-validation`) and its
   workers are started as the Procfile starts them: a cpu worker (prefork, one process per core)
   and a gpu worker (solo, one task at a time; the model runs on the CPU without a GPU).
3. The files are imported into one lab's experiment the way the import page does it
   (experiments.services.add_import; the validation task on the cpu worker copies them in), the
   stain left undeclared so that each slide's own stains are estimated.
4. One prediction per pipeline over all of its slides is submitted with predictions.engine.submit
   (the path `manage.py analyse --wait` takes) and waited for: nuclei-density, ihc-dab,
   tissue-area, tissue-classifier, then nuclei-density and ihc-dab again at tile_size 256 on the
   tiling cases (hdab_50, and the CMU slide in the full set).
5. Each figure is compared with the truth under the tolerances of bench/validation_table.py
   (TOLERANCES, one line of reason each), and one table is printed: case, pipeline, figure,
   measured, true, error, tolerance, PASS/FAIL, with the machine and the command.

Exit status 1 when any row fails. tests/test_validation.py runs the --fast set the same way in
CI, with run_validation() below and the same table code.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
import validation_table as vt  # noqa: E402
from validation_table import TOLERANCES  # noqa: E402,F401  (re-exported: the tolerances of this script)

CMU_CASE = "cmu-1-small-region"
TILING_CASES_FAST = ["hdab_50"]
TILING_CASES_FULL = ["hdab_50", CMU_CASE]


# -- the set ---------------------------------------------------------------------------------
def write_set(folder: Path, fast: bool, seed: int = 0, real_slides: bool = True, log=None):
    """Write the synthetic set (and a copy of the CMU slide) into folder.

    Returns [(name, kind, truth, path)], the synthetic cases first, in synthetic's order.
    """
    from predictions.imaging import synthetic

    cases = [(case.name, case.kind, case.truth, path)
             for path, case in synthetic.write_validation_set(folder, fast=fast, seed=seed, log=log)]
    if real_slides:
        target = folder / f"{CMU_CASE}.svs"
        shutil.copyfile(benchstack.CMU_SLIDE, target)
        cases.append((CMU_CASE, vt.REAL_HE, {"stain": "he"}, target))
    return cases


# -- Django: import, submit, wait, compare -----------------------------------------------------
def import_slides(experiment, user, paths: dict[str, Path], timeout: float = 300):
    """Import files of the share into the experiment (as the import page does) and wait for the
    validation task of the cpu worker to make them ready; {name: Slide}."""
    from django.db import transaction

    from experiments import services
    from experiments.models import Slide

    with transaction.atomic():
        slides = {name: services.add_import(experiment, Path(path).resolve(), user)
                  for name, path in paths.items()}
    deadline = time.monotonic() + timeout
    for name, slide in slides.items():
        while slide.status == Slide.Status.PENDING:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} still pending after {timeout:.0f} s: is a cpu worker running?")
            time.sleep(0.2)
            slide.refresh_from_db()
        if slide.status != Slide.Status.READY:
            raise RuntimeError(f"{name} could not be imported: {slide.error}")
    return slides


def _mask(run):
    import io

    import numpy as np
    from PIL import Image

    if not run.tissue_mask:
        return None, None
    with run.tissue_mask.open("rb") as fh:
        mask = np.asarray(Image.open(io.BytesIO(fh.read())).convert("L")) > 127
    return mask, float(run.plan["mask_downsample"])


def run_validation(experiment, user, slides: dict, cases: list, tiling_cases: list[str],
                   timeout: float = 1800, log=print):
    """Submit one prediction per (pipeline, tiling) over its slides, wait for all, compare.

    cases: [(name, kind, truth, ...)]; slides: {name: Slide} of the experiment. Returns (rows,
    info) where info has each prediction's id, slides and seconds from submit to end.
    """
    from predictions import engine
    from predictions.models import Pipeline, Prediction

    plan = vt.plan_runs([(c[0], c[1], c[2]) for c in cases], tiling_cases)
    kinds = {c[0]: c[1] for c in cases}
    truths = {c[0]: c[2] for c in cases}
    submitted = {}
    for (name, tile_size), case_names in plan.items():
        if not case_names:
            continue
        row = Pipeline.objects.current(name)
        if row is None:
            raise RuntimeError(f"no enabled pipeline {name}")
        params = {"tile_size": tile_size} if tile_size else {}
        prediction = engine.submit(experiment, row, [slides[n] for n in case_names], params, user=user,
                                   trigger=Prediction.Trigger.COMMAND)
        submitted[(name, tile_size)] = (prediction, time.monotonic())
        log(f"submitted #{prediction.pk} {row.name} {row.version} {params or ''} on {len(case_names)} slides")

    deadline = time.monotonic() + timeout
    pending = dict(submitted)
    seconds = {}
    while pending:
        for key, (prediction, started) in list(pending.items()):
            prediction.refresh_from_db()
            if prediction.is_final:
                seconds[key] = round(time.monotonic() - started, 1)
                log(f"#{prediction.pk} {key[0]} {key[1] or ''}: {prediction.status} ({seconds[key]} s)")
                del pending[key]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"still running after {timeout:.0f} s: "
                               + ", ".join(f"#{p.pk} {p.status} {p.done_units}/{p.total_units}"
                                           for p, _ in pending.values()))
        time.sleep(0.3)

    figures: dict[tuple[str, int | None], dict[str, dict]] = {}
    rows: list[vt.Row] = []
    for key, (prediction, _) in submitted.items():
        name, tile_size = key
        figures[key] = {}
        for run in prediction.runs.select_related("slide"):
            case = next(n for n, s in slides.items() if s.pk == run.slide_id)
            if run.status != "succeeded":
                label = name if tile_size in (None, vt.TILE_SIZES[0]) else f"{name} tile_size={tile_size}"
                rows.append(vt.run_failed_row(case, label, run.status, run.error or prediction.error))
                continue
            figures[key][case] = run.metrics or {}
            if tile_size in (None, vt.TILE_SIZES[0]):
                mask, ds = _mask(run) if name == "tissue-area" else (None, None)
                rows += vt.truth_rows(case, kinds[case], truths[case], name, run.metrics or {}, mask, ds)
    coarse, fine = vt.TILE_SIZES
    for pipeline in vt.TILING_FIGURES:
        for case in tiling_cases:
            a, b = figures.get((pipeline, coarse), {}).get(case), figures.get((pipeline, fine), {}).get(case)
            if a is not None and b is not None:
                rows += vt.tiling_rows(case, pipeline, a, b)
    order = {c[0]: i for i, c in enumerate(cases)}
    pipelines = ["nuclei-density", "ihc-dab", "tissue-area", "tissue-classifier"]
    rows.sort(key=lambda r: (order.get(r.case, len(order)), " vs " in r.pipeline,
                             next((i for i, p in enumerate(pipelines) if r.pipeline.startswith(p)), 9)))
    info = {f"{k[0]}{'' if not k[1] else f' tile_size={k[1]}'}": {
        "prediction": p.pk, "status": p.status, "slides": len(plan[k]), "seconds": seconds.get(k)}
        for k, (p, _) in submitted.items()}
    return rows, info


def code_version() -> str:
    """The commit measured, and whether the analysis code differs from it (other work in progress)."""
    def git(*args):
        out = subprocess.run(["git", *args], cwd=benchstack.REPO, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "predictions/imaging", "predictions/pipelines",
                  "predictions/engine.py")
    return commit + (" (with uncommitted changes to the analysis code)" if changed else "")


# -- the throw-away stack ----------------------------------------------------------------------
class ValidationStack(benchstack.Stack):
    """benchstack's Stack with a database and a vhost of its own (a benchmark running at the same
    time keeps its histoia_bench), and a throw-away share (SLIDE_IMPORT_ROOT) holding the validation
    lab's folder."""

    DB_NAME = "histoia_validation"
    VHOST = "histoia-validation"

    def __init__(self, kind: str, keep: bool = False):
        super().__init__("validate", kind, keep)
        self.share = self.work / "share"
        self.share.mkdir()

    @property
    def description(self) -> str:
        if self.kind == "real":
            return (f"real (PostgreSQL database {self.DB_NAME} on 127.0.0.1, RabbitMQ vhost {self.VHOST} on "
                    f"127.0.0.1; dedicated to the validation)")
        return super().description

    def env(self, debug: bool = False) -> dict:
        env = super().env(debug)
        env["SLIDE_IMPORT_ROOT"] = str(self.share)
        if self.kind == "real":
            env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{self.DB_NAME}"
            env["CELERY_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{self.VHOST}"
        return env

    def _prepare_real(self) -> None:
        pg = ["-h", "127.0.0.1", "-U", "postgres"]
        subprocess.run(["dropdb", *pg, "--if-exists", self.DB_NAME], check=True)
        subprocess.run(["createdb", *pg, self.DB_NAME], check=True)
        vhosts = subprocess.run(["rabbitmqctl", "list_vhosts", "-q"], capture_output=True, text=True,
                                check=True)
        if self.VHOST not in vhosts.stdout.split():
            subprocess.run(["rabbitmqctl", "add_vhost", self.VHOST], check=True, capture_output=True)
            subprocess.run(["rabbitmqctl", "set_permissions", "-p", self.VHOST, "guest", ".*", ".*", ".*"],
                           check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the CI subset of the validation set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set (default 0)")
    parser.add_argument("--stack", choices=("real", "embedded"), default="real",
                        help="real: PostgreSQL + RabbitMQ (default); embedded: SQLite + filesystem broker")
    parser.add_argument("--markdown", type=Path, help="also write the table (and the machine) to this file")
    parser.add_argument("--json", type=Path, help="keep the full report as JSON")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the predictions")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away folder")
    args = parser.parse_args(argv)

    report = {"command": benchstack.command_line("validate.py"), "machine": benchstack.machine(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "fast": args.fast, "seed": args.seed, "code": code_version()}
    tiling = TILING_CASES_FAST if args.fast else TILING_CASES_FULL
    started = time.monotonic()
    stack = ValidationStack(args.stack, keep=args.keep)
    try:
        t = time.monotonic()
        # The validation lab's own folder on the share (each lab imports from its own).
        folder = stack.share / "validation-lab"
        folder.mkdir()
        cases = write_set(folder, args.fast, args.seed)
        report["generate_s"] = round(time.monotonic() - t, 1)
        print(f"generated {len(cases)} slides in {folder} ({report['generate_s']} s)", flush=True)
        stack.setup_django()
        report["stack_description"] = stack.description
        report["workers"] = [" ".join(stack.start_worker("cpu", benchstack.machine()["nproc"] or 1)[2:]),
                             " ".join(stack.start_worker("gpu")[2:])]
        from predictions.catalogue import register_demo_model

        user, lab = stack.lab_user("validation", "Validation lab")
        experiment = stack.experiment(lab, user, name="Validation set")   # stain not declared
        register_demo_model(user)
        t = time.monotonic()
        slides = import_slides(experiment, user, {c[0]: c[3] for c in cases})
        report["import_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        rows, report["predictions"] = run_validation(experiment, user, slides, cases, tiling, args.timeout,
                                                     log=lambda m: print(m, flush=True))
        report["predictions_s"] = round(time.monotonic() - t, 1)
    finally:
        stack.close()
    report["total_s"] = round(time.monotonic() - started, 1)
    report["rows"] = [{**r.__dict__, "tolerance": r.tolerance, "result": r.verdict} for r in rows]

    print()
    title = "validation against ground truth" + (" (--fast subset)" if args.fast else "")
    benchstack.print_header(title, report)
    print(f"date:    {report['date']}; {len(cases)} slides; generate {report['generate_s']} s, import "
          f"{report['import_s']} s, predictions {report['predictions_s']} s, total {report['total_s']} s")
    print(f"code:    {report['code']}")
    for line in report["workers"]:
        print(f"worker:  {line}")
    print()
    print(vt.text_table(rows))
    print()
    print("tolerances:")
    for key, tol in TOLERANCES.items():
        print(f"  {key:<22} {tol.describe():<24} {tol.reason}")
    print()
    print(vt.summary(rows))
    for r in vt.failures(rows):
        print(f"FAIL: {r.describe()}")
    if args.markdown:
        args.markdown.write_text(markdown_report(report, rows, len(cases)))
        print(f"markdown: {args.markdown}")
    benchstack.dump(args.json, report)
    return 1 if vt.failures(rows) else 0


def markdown_report(report: dict, rows: list, n_slides: int) -> str:
    m = report["machine"]
    lines = [
        f"Measured {report['date']} on {m['nproc']} cores ({m['cpu']}), {m['mem_gib']} GiB RAM, "
        f"Python {m['python']}, GPU: {m['gpu']}; stack: {report.get('stack_description', '')}; "
        f"code: commit {report['code']}.",
        "",
        f"Command: `{report['command']}` ({'--fast subset' if report['fast'] else 'full set'}, seed "
        f"{report['seed']}, {n_slides} slides): generate {report['generate_s']} s, "
        f"import {report['import_s']} s, predictions {report['predictions_s']} s, "
        f"total {report['total_s']} s.",
        "",
        vt.markdown_table(rows),
        "",
        f"{vt.summary(rows)}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
