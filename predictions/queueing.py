"""The queue as users see it: the order predictions will run in, positions and estimated times.

Plain functions over the ORM, shared by the API (/api/v1/queue/) and the pages:

- waiting(user): queued and running predictions the user may see, in the order they run, each
  with its position and an ETA;
- throughput(pipeline): how fast that pipeline's tiles go, measured from earlier batches;
- eta_seconds(prediction): estimated seconds until a queued or running prediction ends.

Order: the order the dispatcher sends work in (predictions/run_order.py: started predictions
first, then urgent, labs taking turns), so the order shown is the order run. Positions and ETAs
count every lab's work (another lab's prediction ahead of yours delays yours too) but only the
user's own predictions are listed. Estimates are the work ahead on the same queue plus the
prediction's own, over the measured throughput and the queue's worker processes: since each
queue runs its predictions one after another, the sum is when it ends (bench/eta_accuracy.py
measures how close that comes).
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Count, Max, Prefetch, Q

from . import dispatch
from .models import BatchResult, Pipeline, Prediction, SlideRun, Status

# Used until a pipeline has history, deliberately on the slow side (per worker process).
DEFAULT_TILES_PER_SECOND = {"cpu": 1.0, "gpu": 2.0}
DEFAULT_SLIDE_OVERHEAD_SECONDS = 15.0    # prepare + aggregate of one slide
DEFAULT_TILES_PER_SLIDE = 200
HISTORY = 200                           # most recent batches / slide runs measured
CACHE_SECONDS = 30


@dataclass(frozen=True)
class Throughput:
    pipeline: str
    queue: str
    tiles_per_second: float            # one worker process
    slide_overhead_seconds: float      # prepare + aggregate of one slide, on average
    tiles_per_slide: float             # on average: for a slide whose size is not known
    batches_measured: int
    # A slide not prepared yet has no tile count: it is estimated from the slide's size, as the
    # pipeline's history goes (tiles per megapixel of slide; prepare + aggregate as a fixed part
    # plus a part per megapixel). None without history: the averages above are used.
    tiles_per_megapixel: float | None = None
    overhead_fixed_seconds: float = 0.0
    overhead_seconds_per_megapixel: float = 0.0

    @property
    def no_history(self) -> bool:
        return self.batches_measured == 0

    @property
    def note(self) -> str:
        if self.no_history:
            return (f"Estimate with no history: {self.pipeline} has not run here yet, so a conservative "
                    f"{self.tiles_per_second:g} tiles/s per worker process is assumed.")
        return f"Measured over the last {self.batches_measured} batches of {self.pipeline}."

    def unprepared_slide(self, megapixels: float | None) -> tuple[float, float]:
        """(tiles, seconds of prepare + aggregate) expected of a slide of this size."""
        if not megapixels or self.tiles_per_megapixel is None:
            return self.tiles_per_slide, self.slide_overhead_seconds
        return (self.tiles_per_megapixel * megapixels,
                self.overhead_fixed_seconds + self.overhead_seconds_per_megapixel * megapixels)

    def as_dict(self) -> dict:
        return {"pipeline": self.pipeline, "queue": self.queue, "tiles_per_second": round(self.tiles_per_second, 3),
                "slide_overhead_seconds": round(self.slide_overhead_seconds, 1),
                "batches_measured": self.batches_measured, "no_history": self.no_history, "note": self.note}


def throughput(pipeline: Pipeline | str, fresh: bool = False) -> Throughput:
    """Tiles per second of one worker process for this pipeline, from its recent BatchResults,
    and what its slides cost by size, from its recent successful slide runs.

    Measured over every version of the pipeline (same name); with no history, a conservative
    default per queue, and `no_history` says so. fresh: measured now, not the figure cached for
    the pages (CACHE_SECONDS).
    """
    if isinstance(pipeline, str):
        pipeline = Pipeline.objects.filter(name=pipeline).order_by("-created_at").first() or Pipeline(name=pipeline)
    name, queue = pipeline.name, pipeline.batch_queue or "cpu"
    tiled = any(step.get("name") == "tiles" for step in pipeline.steps or [])
    key = f"histoia:throughput:{name}"
    cached = None if fresh else cache.get(key)
    if cached is not None:
        return cached
    batches = list(BatchResult.objects.filter(run__prediction__pipeline__name=name, seconds__gt=0)
                   .order_by("-finished_at").values_list("tiles", "seconds")[:HISTORY])
    tiles, seconds = sum(t for t, _ in batches), sum(s for _, s in batches)
    rate = tiles / seconds if tiles and seconds else DEFAULT_TILES_PER_SECOND.get(queue, 1.0)
    runs = [(t or {}, units, _megapixels(w, h)) for t, units, w, h in
            SlideRun.objects.filter(prediction__pipeline__name=name, status=Status.SUCCEEDED)
            .order_by("-finished_at").values_list("timings", "total_units", "slide__width", "slide__height")[:HISTORY]]
    overheads = [(t.get("prepare_s", 0) + t.get("aggregate_s", 0), mpx) for t, _, mpx in runs if t]
    overhead = sum(o for o, _ in overheads) / len(overheads) if overheads else DEFAULT_SLIDE_OVERHEAD_SECONDS
    per_slide = [units - 2 for _, units, _ in runs if units and units > 2]
    tiles_per_slide = sum(per_slide) / len(per_slide) if per_slide else (DEFAULT_TILES_PER_SLIDE if tiled else 0)
    sized = [(max(0, units - 2), mpx) for _, units, mpx in runs if units and mpx]
    size_fit = {}
    if sized:
        size_fit["tiles_per_megapixel"] = sum(t for t, _ in sized) / sum(m for _, m in sized)
        fixed, per_mpx = _line([(mpx, o) for o, mpx in overheads if mpx])
        size_fit.update(overhead_fixed_seconds=fixed, overhead_seconds_per_megapixel=per_mpx)
    result = Throughput(name, queue, rate, overhead, tiles_per_slide, len(batches) if tiles and seconds else 0,
                        **size_fit)
    cache.set(key, result, CACHE_SECONDS)
    return result


def _megapixels(width, height) -> float | None:
    return width * height / 1e6 if width and height else None


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of y = a + b x by least squares, neither negative (a cost never shrinks with size)."""
    if not points:
        return DEFAULT_SLIDE_OVERHEAD_SECONDS, 0.0
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    spread = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / spread if spread else 0.0
    b = max(0.0, b)
    a = my - b * mx
    if a < 0:   # the cost is proportional to size: a line through zero
        a, b = 0.0, sum(x * y for x, y in points) / sum(x * x for x, _ in points)
    return a, b


def _parallelism(queue: str) -> int:
    """Worker processes serving `queue`, as the dispatcher counts them (workers report themselves
    in the database: no broadcast to wait for)."""
    return dispatch.processes(queue)


def _remaining(runs, rate: Throughput, parallelism) -> float:
    """Seconds left for slide runs given as (status, total_units, done_units, slide megapixels).

    The dispatcher gives one prediction all the queue's processes at once (dispatch.py): its tile
    batches, and the prepare of each next slide, share them; what cannot be shared is the first
    slide's prepare (before any batch exists) and the last slide's aggregate (after every batch).
    """
    tiles = overhead = serial = 0.0
    for status, total_units, done_units, megapixels in runs:
        if status in (Status.SUCCEEDED, Status.FAILED, Status.PARTIAL, Status.CANCELLED):
            continue
        if total_units <= 2 and done_units == 0:   # not prepared yet: the number of tiles is unknown
            slide_tiles, slide_overhead = rate.unprepared_slide(megapixels)
            tiles += slide_tiles
            overhead += slide_overhead
            serial = max(serial, slide_overhead)
        else:  # done_units counts prepare (1) and finished tiles; the last unit is aggregate
            tiles += max(0, total_units - done_units - 1)
            overhead += rate.slide_overhead_seconds / 2
            serial = max(serial, rate.slide_overhead_seconds / 2)
    if not tiles and not overhead:
        return 0.0
    shared = tiles / rate.tiles_per_second + overhead - serial
    return shared / parallelism(rate.queue) + serial


ACTIVE = [Status.QUEUED, Status.RUNNING]


def _runs_of(predictions) -> dict[int, list]:
    """The progress of the slide runs of these predictions (a queryset of them), by prediction."""
    runs = defaultdict(list)
    for prediction_id, status, total, done, width, height in (
            SlideRun.objects.filter(prediction__in=predictions).values_list(
                "prediction_id", "status", "total_units", "done_units", "slide__width", "slide__height")):
        runs[prediction_id].append((status, total, done, _megapixels(width, height)))
    return runs


def _key(e) -> tuple:
    """run_order's order as one sortable key: started ones first, as they started; then urgent,
    turns, oldest first."""
    if e.started:
        return (0, e.started_at or e.created_at, e.pk)
    return (1, not e.urgent, e.turn, e.created_at, e.pk)


class _Planner:
    """Positions and ETAs over predictions given in run order; predictions submitted later can be
    placed into it (add) without planning the rest again.

    Every list of keys is kept sorted (run order), so a lab's listing, a position and an ETA are
    each a slice or a bisection: what a page shows costs what it shows, not the queue's length.
    `lock` guards them: requests read a plan that another request may be placing a submit into.
    """

    PRIVATE = ("key", "own", "pipeline_id")   # kept for planning, not part of an entry

    def __init__(self):
        self.lock = threading.Lock()
        self.rates: dict[int, Throughput] = {}
        self.parallel: dict[str, int] = {}
        self.pipelines: dict[int, Pipeline] = {}
        self.entries: dict[int, dict] = {}
        self.keys: list[tuple] = []                          # every entry's key
        self.lab_keys: dict[int, list[tuple]] = defaultdict(list)      # per lab
        self.waiting_keys: list[tuple] = []                 # the ones not started
        self.queue_keys: dict[str, list[tuple]] = defaultdict(list)    # per queue
        self.queue_etas: dict[str, list[float]] = defaultdict(list)    # ends, aligned with queue_keys

    def parallelism(self, queue):
        if queue not in self.parallel:
            self.parallel[queue] = _parallelism(queue)
        return self.parallel[queue]

    def rate(self, pipeline_id) -> Throughput:
        if pipeline_id not in self.rates:
            if pipeline_id not in self.pipelines:
                self.pipelines.update(Pipeline.objects.in_bulk([pipeline_id]))
            self.rates[pipeline_id] = throughput(self.pipelines[pipeline_id])
        return self.rates[pipeline_id]

    def add(self, e, pipeline_id, runs) -> None:
        """Place one prediction: in run order when given in order, else wherever its key puts it
        (a later submit only comes in between: the ones behind it end later by its own time)."""
        rate = self.rate(pipeline_id)
        own = _remaining(runs, rate, self.parallelism)
        key, queue = _key(e), rate.queue
        keys, etas = self.queue_keys[queue], self.queue_etas[queue]
        i = bisect.bisect_left(keys, key)
        # Predictions run one after another on each queue (dispatch.py), running ones too: one
        # that has started behind another (its first slide prepared while the other's last
        # batches ran) ends after it.
        keys.insert(i, key)
        etas.insert(i, (etas[i - 1] if i else 0.0) + own)
        for j in range(i + 1, len(etas)):
            etas[j] += own
        bisect.insort(self.keys, key)
        bisect.insort(self.lab_keys[e.lab], key)
        if not e.started:
            bisect.insort(self.waiting_keys, key)
        self.entries[e.pk] = {"pk": e.pk, "key": key, "status": Status.RUNNING if e.started else Status.QUEUED,
                              "queue": queue, "lab": e.lab, "estimated_without_history": rate.no_history,
                              "throughput": rate, "own": own, "pipeline_id": pipeline_id}

    def counts(self) -> tuple[int, int]:
        """(queued, running) as planned."""
        return len(self.waiting_keys), len(self.entries) - len(self.waiting_keys)

    def remove(self, pk) -> None:
        """Take a prediction out (it ended, or it is placed again as started): the ends behind it
        on its queue come sooner by its own time."""
        found = self.entries.pop(pk)
        key, keys, etas = found["key"], self.queue_keys[found["queue"]], self.queue_etas[found["queue"]]
        i = bisect.bisect_left(keys, key)
        del keys[i], etas[i]
        for j in range(i, len(etas)):
            etas[j] -= found["own"]
        for ordered in (self.keys, self.lab_keys[found["lab"]],
                        *([self.waiting_keys] if found["status"] == Status.QUEUED else [])):
            del ordered[bisect.bisect_left(ordered, key)]

    def remeasure(self, pk, runs) -> None:
        """A planned prediction's remaining work measured again from its runs' progress: its end,
        and every end behind it on its queue, move by the difference."""
        found = self.entries[pk]
        own = _remaining(runs, self.rate(found["pipeline_id"]), self.parallelism)
        change, found["own"] = own - found["own"], own
        if change:
            keys, etas = self.queue_keys[found["queue"]], self.queue_etas[found["queue"]]
            for j in range(bisect.bisect_left(keys, found["key"]), len(etas)):
                etas[j] += change

    def listing(self, labs=None) -> Listing:
        """The entries of these labs (all when None) in run order, read as they are shown."""
        with self.lock:
            if labs is None:
                keys = list(self.keys)
            else:
                keys = list(heapq.merge(*(self.lab_keys.get(lab, ()) for lab in labs)))
        return Listing(self, keys)

    def entry(self, pk) -> dict | None:
        found = self.entries.get(pk)
        if found is None:
            return None
        key, queue = found["key"], found["queue"]
        position = 0 if found["status"] == Status.RUNNING else bisect.bisect_left(self.waiting_keys, key) + 1
        eta = self.queue_etas[queue][bisect.bisect_left(self.queue_keys[queue], key)]
        return ({k: v for k, v in found.items() if k not in self.PRIVATE}
                | {"position": position, "eta_seconds": round(eta)})


class Listing(Sequence):
    """Queue entries in run order (see waiting), each built when it is read: a page of 25 costs 25
    entries however long the queue. `running` is how many come first because they have started."""

    def __init__(self, planner: _Planner, keys: list[tuple]):
        self.planner, self.keys = planner, keys
        self.running = bisect.bisect_left(keys, (1,))   # started ones' keys begin with 0 (_key)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):
        # An entry whose prediction has ended since this listing was taken reads as None (a
        # slice leaves it out).
        with self.planner.lock:
            if isinstance(index, slice):
                return [e for e in (self.planner.entry(key[-1]) for key in self.keys[index]) if e is not None]
            return self.planner.entry(self.keys[index][-1])

    def __iter__(self):
        return iter(self[:])


def _plan() -> _Planner:
    """Every active prediction (all labs) planned: position, queue, ETA, estimate basis."""
    planner = _Planner()
    in_order = dispatch.active_in_run_order()
    planner.pipelines = Pipeline.objects.in_bulk({pipeline_id for _, pipeline_id in in_order})
    runs = _runs_of(Prediction.objects.filter(status__in=ACTIVE))
    for e, pipeline_id in in_order:
        planner.add(e, pipeline_id, runs.get(e.pk, ()))
    return planner


# One prediction's place (its 202 answer, its page, its API detail) comes from a plan kept per
# process: what it says of order and positions is always current (the queue's counts and newest
# prediction are checked on every use; predictions submitted, started or ended since are placed,
# moved or taken out: _catch_up), while its ETAs may be a few seconds behind the work done: every
# PLAN_SECONDS the running predictions' progress is read again and the ends behind them move
# with it. Each of these reads a few rows, whatever the queue's length, so a submit, a dashboard
# refresh and the API's queue cost the same with 10 or 10,000 predictions waiting
# (bench/submit_cost.py, bench/page_cost.py). The queue is planned in full (320 ms with 10,000
# waiting) every FULL_PLAN_SECONDS, which brings in the pipelines' newly measured speeds and the
# workers' count, and when a waiting prediction was cancelled.
PLAN_SECONDS = 5.0
FULL_PLAN_SECONDS = 60.0
_recent: dict = {}
_recent_lock = threading.Lock()


def _queue_version() -> tuple:
    counts = Prediction.objects.filter(status__in=ACTIVE).aggregate(
        queued=Count("pk", filter=Q(status=Status.QUEUED)), running=Count("pk", filter=Q(status=Status.RUNNING)),
        newest=Max("pk"))
    return counts["queued"], counts["running"], counts["newest"] or 0


def _recent_plan() -> _Planner:
    version = _queue_version()
    with _recent_lock:
        made_at, measured_at, known, planner = _recent.get("plan", (0.0, 0.0, None, None))
        now = time.monotonic()
        if (planner is not None and now - made_at < FULL_PLAN_SECONDS
                and (known == version or _catch_up(planner, known, version))):
            if now - measured_at >= PLAN_SECONDS:
                _remeasure_running(planner)
                measured_at = now
            _recent["plan"] = (made_at, measured_at, version, planner)
            return planner
        planner = _plan()
        _recent["plan"] = (now, now, version, planner)
        return planner


def _remeasure_running(planner: _Planner) -> None:
    """The running predictions' progress read again into the plan (the same ones it planned:
    the queue's counts said that none started or ended since)."""
    runs = _runs_of(Prediction.objects.filter(status=Status.RUNNING))
    with planner.lock:
        for pk, progress in runs.items():
            if pk in planner.entries:
                planner.remeasure(pk, progress)


# How far below the newest prediction a plan saw to look for submits committed after it (a pk is
# taken at insert, the row seen at commit): more than the web threads that submit at once.
LATE_COMMITS = 64


def _catch_up(planner: _Planner, known: tuple, version: tuple) -> bool:
    """Bring the plan to the queue as it is now without planning it again: the predictions
    submitted since are placed into it, those that started are moved ahead of the waiting ones,
    those that ended are taken out. Reads the new predictions, and the running ones when the
    counts say that some started or ended (a few rows, whatever the queue's length). False when
    that does not account for the queue's counts (a waiting prediction was cancelled): then the
    queue is planned again."""
    queued, running, newest = version
    # Up to the newest the counts saw: more may have been committed since, by other requests.
    new, new_runs = _new_since(known[2], newest) if newest > known[2] else ([], {})
    if len(new) < queued - known[0]:   # one committed after a later one: look just below too
        late, late_runs = _new_since(max(0, known[2] - LATE_COMMITS), known[2])
        new, new_runs = late + new, {**late_runs, **new_runs}
    with planner.lock:
        for e, pipeline_id in new:
            if e.pk not in planner.entries:
                planner.add(e, pipeline_id, new_runs[e.pk])
        if planner.counts() == (queued, running):   # only submits since: the usual case
            return True
    now_running = {e.pk: (e, pipeline_id) for e, pipeline_id in
                   dispatch.entries_of(Prediction.objects.filter(status=Status.RUNNING))}
    runs = _runs_of(Prediction.objects.filter(status=Status.RUNNING))
    with planner.lock:
        for pk, found in list(planner.entries.items()):
            if found["status"] == Status.RUNNING and pk not in now_running:
                planner.remove(pk)                                   # ended
            elif found["status"] == Status.QUEUED and pk in now_running:
                planner.remove(pk)                                   # started: its place in run order changes
                planner.add(*now_running[pk], runs.get(pk, ()))
        return planner.counts() == (queued, running)


def _new_since(after: int, upto: int) -> tuple[list, dict[int, list]]:
    """The active predictions after prediction `after` up to `upto` as (Entry, pipeline id), in
    pk order, and their runs' progress by prediction: one query, through their slide runs
    (every prediction has at least one)."""
    entries, runs = {}, defaultdict(list)
    fields = [f"prediction__{name}" for name in dispatch.ENTRY_FIELDS]
    for row in (SlideRun.objects.filter(prediction__pk__gt=after, prediction__pk__lte=upto,
                                        prediction__status__in=ACTIVE)
                .order_by("prediction_id", "pk")
                .values_list(*fields, "status", "total_units", "done_units", "slide__width", "slide__height")):
        head, (status, total, done, width, height) = row[:len(fields)], row[len(fields):]
        if head[0] not in entries:
            entries[head[0]] = dispatch.entry_of(head)
        runs[head[0]].append((status, total, done, _megapixels(width, height)))
    return list(entries.values()), runs


def forget_recent_plan() -> None:
    """Drop this process's recent plan (tests start each case from a fresh queue)."""
    with _recent_lock:
        _recent.clear()


def waiting(user=None, load: bool = True, recent: bool = False) -> Listing | list[dict]:
    """Queued and running predictions `user` may see (all when user is None), in run order.

    Each entry: {"pk", "position" (0 = running; 1 = next to start), "status", "queue", "lab",
    "eta_seconds" (until it ends), "estimated_without_history", "throughput"}, and with `load`
    "prediction", the model object (see with_predictions). Without `load`, a Listing: entries
    are built as they are read, so a page shows the first 25 of 10,000 for the cost of 25.

    recent: from this process's plan, as a prediction's own place (entry): order and positions
    current, ETAs up to PLAN_SECONDS behind the work done. The dashboard and the API's queue,
    refreshed every few seconds by every client, use it; a plan made now (the default) reads the
    whole queue, 35 ms with 1,000 waiting and 320 ms with 10,000 (bench/page_cost.py).
    """
    planner = _recent_plan() if recent else _plan()
    listing = planner.listing(None if user is None else list(user.labs.values_list("pk", flat=True)))
    return with_predictions(listing[:]) if load else listing


def with_predictions(entries: list[dict], related=("pipeline", "experiment"), runs: bool = False,
                     only: tuple[str, ...] = ()) -> list[dict]:
    """Set each entry's "prediction" (with the `related` rows), in a bounded number of queries;
    an entry whose prediction has gone since is left out. only: the columns read, when a page
    shows only these (a pipeline row carries its steps and parameters as JSON).

    runs: the running ones' slide runs too (the dashboard draws a bar per slide of what runs; the
    queued rows show none). Only the progress columns: a run's plan lists every tile of its slide
    (megabytes of JSON on a large slide), far too much to decode on every refresh.
    """
    predictions = Prediction.objects.filter(pk__in=[e["pk"] for e in entries]).select_related(*related)
    if only:
        predictions = predictions.only(*only)
    if runs:
        running = [e["pk"] for e in entries if e["status"] == Status.RUNNING]
        predictions = predictions.prefetch_related(Prefetch("runs", queryset=SlideRun.objects.filter(
            prediction__in=running).select_related("slide").order_by("pk").only(
            "prediction_id", "status", "done_units", "total_units", "slide__original_name")))
    found = {p.pk: p for p in predictions}
    for entry in entries:
        entry["prediction"] = found.get(entry["pk"])
    return [e for e in entries if e["prediction"] is not None]


def entry(prediction_id: int) -> dict | None:
    """The queue entry of one prediction (position, ETA...), None once it has ended."""
    planner = _recent_plan()
    with planner.lock:
        return planner.entry(prediction_id)


def eta_seconds(prediction: Prediction) -> int | None:
    """Estimated seconds until a queued or running prediction ends; None once it has ended.

    The remaining work of everything ahead of it on the same queue, plus its own, over the
    measured throughput.
    """
    if prediction.is_final:
        return None
    found = entry(prediction.pk)
    return found["eta_seconds"] if found else None
