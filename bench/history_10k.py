"""The history page with 10,000 predictions: latency of the first page and SQL queries per page.

    .venv/bin/python bench/history_10k.py                       # SQLite (throw-away), 10,000 predictions
    .venv/bin/python bench/history_10k.py --stack real          # PostgreSQL (dedicated database histoia_bench)
    .venv/bin/python bench/history_10k.py --predictions 50000 --requests 30

A throw-away database (bench/benchstack.py), filled with bulk_create: 3 labs, 8 users (the
viewer is a member of two labs; a third lab's predictions must stay invisible), 12 experiments
with 3 slides each, every pipeline version installed, --predictions predictions spread over a
year (created_at), with every status, trigger and priority, one slide run each (succeeded ones
with figures). Workers are not started: the page only reads the database.

The page is requested in this process through django.test.Client (logged-in viewer, DEBUG off)
--requests times per variant after 3 warm-up requests: the first page unfiltered, filtered by
each filter of the page (experiment, pipeline, status, started by, date from, date to), all
filters at once, and the last page. Timed per request (client-side, in-process: no HTTP
server); SQL queries counted with django.test.utils.CaptureQueriesContext, with their own time.
The main list query's plan (EXPLAIN) is printed for the unfiltered page. The API list
(/api/v1/predictions/) is measured the same way, unfiltered.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchstack  # noqa: E402
from benchstack import Stack, loadavg, machine, percentile  # noqa: E402


def populate(n: int, seed: int = 42):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from experiments.models import Experiment, Lab, Slide
    from predictions.models import Pipeline, Prediction, SlideRun, Status

    rng = random.Random(seed)
    User = get_user_model()
    labs = [Lab.objects.create(name=f"Lab {c}") for c in "ABC"]
    users = [User.objects.create_user(f"user{i}", password=benchstack.PASSWORD) for i in range(8)]
    viewer = users[0]
    labs[0].members.add(*users[:4])
    labs[1].members.add(users[0], *users[4:6])
    labs[2].members.add(*users[6:])
    lab_users = {labs[0].pk: users[:4], labs[1].pk: [users[0], *users[4:6]], labs[2].pk: users[6:]}
    experiments = [Experiment.objects.create(name=f"Experiment {i}", lab=labs[i % 3], created_by=users[0])
                   for i in range(12)]
    slides = {}
    for e in experiments:
        slides[e.pk] = Slide.objects.bulk_create([
            Slide(experiment=e, original_name=f"case-{e.pk}-{k}.svs", file=f"slides/fake/{e.pk}-{k}.svs",
                  status=Slide.Status.READY, sha256=f"{e.pk:032x}{k:032x}", width=40000, height=30000, mpp=0.25)
            for k in range(3)])
    pipelines = list(Pipeline.objects.filter(installed=True))
    statuses = [Status.SUCCEEDED] * 6 + [Status.FAILED, Status.PARTIAL, Status.CANCELLED, Status.QUEUED]
    triggers = [Prediction.Trigger.USER] * 5 + [Prediction.Trigger.API, Prediction.Trigger.SCHEDULE,
                                                 Prediction.Trigger.RERUN, Prediction.Trigger.COMMAND]
    now = timezone.now()
    rows, created = [], []
    for i in range(n):
        e = experiments[rng.randrange(len(experiments))]
        status = rng.choice(statuses)
        trigger = rng.choice(triggers)
        at = now - timedelta(seconds=rng.randrange(365 * 86400))
        started = at + timedelta(seconds=rng.randrange(600)) if status != Status.QUEUED else None
        finished = started + timedelta(seconds=rng.randrange(60, 7200)) if started else None
        rows.append(Prediction(
            experiment=e, pipeline=rng.choice(pipelines), params={"tile_size": 512, "min_tissue": 0.25},
            status=status, priority=rng.choice(["normal"] * 9 + ["urgent"]), trigger=trigger,
            triggered_by=None if trigger == Prediction.Trigger.SCHEDULE else rng.choice(lab_users[e.lab_id]),
            schedule_name="nightly re-run" if trigger == Prediction.Trigger.SCHEDULE else "",
            software_version="bench", started_at=started, finished_at=finished,
            done_units=3000 if status == Status.SUCCEEDED else rng.randrange(3000), total_units=3002))
        created.append(at)
    objs = Prediction.objects.bulk_create(rows, batch_size=1000)
    for obj, at in zip(objs, created):
        obj.created_at = at
    Prediction.objects.bulk_update(objs, ["created_at"], batch_size=1000)
    runs = []
    for obj in objs:
        slide = rng.choice(slides[obj.experiment_id])
        runs.append(SlideRun(prediction=obj, slide=slide, slide_sha256=slide.sha256, status=obj.status,
                             total_units=3002, done_units=obj.done_units, started_at=obj.started_at,
                             finished_at=obj.finished_at,
                             metrics={"tissue_area_mm2": 12.5, "dab_positive_fraction": 0.12}
                             if obj.status == Status.SUCCEEDED else None))
    SlideRun.objects.bulk_create(runs, batch_size=1000)
    visible = Prediction.objects.for_user(viewer).count()
    return viewer, experiments, users, pipelines, visible, labs


def measure(client, url: str, requests: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code)
    times, sql_ms = [], []
    for _ in range(requests):
        with CaptureQueriesContext(connection) as q:
            t = time.perf_counter()
            r = client.get(url)
            times.append((time.perf_counter() - t) * 1000)
        sql_ms.append(sum(float(x["time"]) for x in q.captured_queries) * 1000)
        queries = len(q.captured_queries)
    body = r.content.decode()
    rows = body.count("<tr data-prediction=") if "/api/" not in url else body.count('"page_url"')
    return {"url": url, "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "max_ms": round(max(times), 1), "queries": queries, "sql_ms_p50": percentile(sql_ms, 50),
            "rows": rows, "sql": [x["sql"] for x in q.captured_queries]}


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cur:
        if connection.vendor == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + sql)
            return "\n".join(f"    {r[-1]}" for r in cur.fetchall())
        cur.execute("EXPLAIN ANALYZE " + sql)
        return "\n".join(f"    {r[0]}" for r in cur.fetchall())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="History page latency and queries with many predictions.")
    parser.add_argument("--predictions", type=int, default=10_000, help="rows to create (default 10000, max 100000)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per variant (default 50, max 500)")
    parser.add_argument("--stack", choices=("embedded", "real"), default="embedded",
                        help="embedded: SQLite; real: PostgreSQL (dedicated database histoia_bench)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    n = max(100, min(100_000, args.predictions))
    requests = max(5, min(500, args.requests))

    report = {"command": benchstack.command_line("history_10k.py"), "machine": machine(), "predictions": n,
              "requests_per_variant": requests, "variants": [], "load_start": loadavg()}
    stack = Stack("history", args.stack, keep=args.keep)
    try:
        stack.setup_django()
        report["stack_description"] = stack.description.replace(
            "RabbitMQ vhost histoia-bench on 127.0.0.1", "no broker used")
        from django.db import connection
        from django.test import Client

        started = time.perf_counter()
        viewer, experiments, users, pipelines, visible, labs = populate(n)
        report["populate_s"] = round(time.perf_counter() - started, 1)
        report["visible_to_viewer"] = visible
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute("ANALYZE")
        report["database"] = f"{connection.vendor} {'.'.join(map(str, connection.Database.sqlite_version_info)) if connection.vendor == 'sqlite' else connection.pg_version}"
        client = Client()
        client.force_login(viewer)
        exp = next(e for e in experiments if e.lab_id == labs[0].pk)
        other = next(u for u in users if u.pk != viewer.pk)
        year_ago = (time.time() - 200 * 86400)
        from datetime import date

        d_from = date.fromtimestamp(year_ago).isoformat()
        d_to = date.fromtimestamp(time.time() - 150 * 86400).isoformat()
        base = "/predictions/"
        variants = [
            ("first page, no filter", base),
            ("experiment", f"{base}?experiment={exp.pk}"),
            ("pipeline", f"{base}?pipeline=ihc-dab"),
            ("status", f"{base}?status=failed"),
            ("started by (user)", f"{base}?user={other.pk}"),
            ("date from", f"{base}?date_from={d_from}"),
            ("date to", f"{base}?date_to={d_to}"),
            ("all filters", f"{base}?experiment={exp.pk}&pipeline=ihc-dab&status=succeeded&user={other.pk}"
                            f"&date_from={date.fromtimestamp(time.time() - 365 * 86400).isoformat()}&date_to={date.today().isoformat()}"),
            ("last page, no filter", f"{base}?page={max(1, -(-visible // 50))}"),
            ("API list, no filter", "/api/v1/predictions/"),
        ]
        for name, url in variants:
            load = loadavg()
            m = measure(client, url, requests)
            m.update({"name": name, "load_before": load})
            report["variants"].append(m)
            print(f"  {name:<24} p50 {m['p50_ms']:>7} ms  p99 {m['p99_ms']:>7} ms  queries {m['queries']:>3}  "
                  f"rows {m['rows']}", flush=True)
        main_sql = max(report["variants"][0]["sql"], key=lambda s: ("ORDER BY" in s, "LIMIT" in s, len(s)))
        report["explain_first_page"] = explain(main_sql)
        report["main_sql"] = main_sql
    finally:
        stack.close()
    report["load_end"] = loadavg()

    benchstack.print_header("history page with many predictions", report)
    print(f"data:    {n} predictions ({report['visible_to_viewer']} visible to the viewer, a member of 2 of 3 labs), "
          f"12 experiments, {len(pipelines)} pipeline versions, 8 users; filled in {report['populate_s']} s; "
          f"{report['database']}")
    print(f"timing:  django.test.Client in-process, DEBUG off, {requests} requests per variant after 3 warm-up")
    print()
    print(f"{'variant':<24} {'rows':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'queries':>7} {'SQL ms p50':>10}  load before")
    for m in report["variants"]:
        print(f"{m['name']:<24} {m['rows']:>4} {m['p50_ms']:>8} {m['p99_ms']:>8} {m['max_ms']:>8} {m['queries']:>7} "
              f"{m['sql_ms_p50']:>10}  {m['load_before']}")
    print()
    print("queries of the first page, unfiltered:")
    for s in report["variants"][0]["sql"]:
        print(f"  - {s[:220]}{'...' if len(s) > 220 else ''}")
    print("plan of the list query:")
    print(report["explain_first_page"])
    for m in report["variants"]:
        m.pop("sql", None)
    benchstack.dump(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
