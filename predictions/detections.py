"""Per-object detections of a slide (e.g. nuclei): storage of the batches' records, their merge
into one file per slide run, and box queries for the viewer.

A record is three float32 numbers: x, y (the object's centroid in level-0 pixels of the slide,
origin top-left, y down) and area (level-0 px²), 12 bytes an object. Files are plain .npy arrays
of shape (N, 3), stored with the run's storage (the storage of its result files):

    result_path(run, "detections/batch-00012.npy")   one per tile batch, written by the batch task
    result_path(run, "detections.npy")                the slide's, sorted by y then x (aggregate)

How the engine uses it (a pipeline's process_tiles may put "_detections", an (N, 3) array, in
any of the rows it returns):

    batch task:      array = pop_from_rows(rows)            # before the rows are stored as JSON
                     if array is not None: save_batch(run, index, array)
    aggregate task:  run.detections = merge(run, batch_count)

Both are idempotent. save_batch replaces its own file atomically (a redelivered batch writes the
same file again; a reader never sees half of one). merge writes the merged file atomically and
only then deletes the batch files, so a merged file that exists is complete: merge run again
after a crash finds it, removes the batch files left over and returns its name. Batches are never
redone once aggregate has run (the engine keeps their rows), so leftovers are copies of what the
merged file already holds.

The numpy parts are small pure functions (pop_from_rows, as_records, sort_records, in_box,
equivalent_radius); the rest touches Django's storage.
"""

from __future__ import annotations

import bisect
import io
import os
import tempfile
from typing import Iterable

import numpy as np

COLUMNS = ("x", "y", "area")
DTYPE = np.float32
KEY = "_detections"
MERGED = "detections.npy"
# Rows read at once when scanning a slab of the merged file (12 MiB of records).
SCAN_ROWS = 1 << 20


def empty() -> np.ndarray:
    return np.zeros((0, 3), DTYPE)


# -- pure numpy ---------------------------------------------------------------------------------
def as_records(value) -> np.ndarray:
    """A pipeline's detections as a C-contiguous (N, 3) float32 array, rows with a non-finite
    number dropped. None or an empty sequence is no detections; any other shape is a ValueError."""
    if value is None:
        return empty()
    array = np.asarray(value, dtype=DTYPE)
    if array.size == 0:
        return empty()
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"detections must be an (N, 3) array of x, y, area; got shape {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        array = array[finite]
    return np.ascontiguousarray(array)


def pop_from_rows(rows: Iterable[dict]) -> np.ndarray | None:
    """Remove the "_detections" key from every row; all of them concatenated in row order,
    (M, 3) float32 (M may be 0), or None when no row had the key."""
    found = []
    for row in rows:
        if KEY in row:
            found.append(as_records(row.pop(KEY)))
    if not found:
        return None
    return np.ascontiguousarray(np.concatenate(found)) if len(found) > 1 else found[0]


def sort_records(array: np.ndarray) -> np.ndarray:
    """The records sorted by y, then x (a stable sort: equal centroids keep their order)."""
    array = as_records(array)
    if len(array) < 2:
        return array
    order = np.lexsort((array[:, 0], array[:, 1]))
    return np.ascontiguousarray(array[order])


class _Column:
    """One column of a (possibly memory-mapped) array as a sequence, for bisect: a binary search
    reads about log2(N) values instead of copying the column."""

    def __init__(self, array, column):
        self.array, self.column = array, column

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        return float(self.array[i, self.column])


def in_box(array: np.ndarray, x0: float, y0: float, x1: float, y1: float, limit: int) -> np.ndarray:
    """The records whose centroid lies in [x0, x1) x [y0, y1), at most `limit` of them.

    `array` must be sorted by y (then x) as the merged file is; it may be memory-mapped: the y
    range is found by binary search and only that slab is read, SCAN_ROWS at a time. When more
    than `limit` records match, an evenly spaced selection of them (in y, x order) is returned,
    the same every time, so a truncated answer still covers the whole box.
    """
    return box_query(array, x0, y0, x1, y1, limit)[0]


def box_query(array: np.ndarray, x0: float, y0: float, x1: float, y1: float,
              limit: int) -> tuple[np.ndarray, int]:
    """in_box's records and how many records lie in the box in all."""
    limit = max(int(limit), 0)
    if len(array) == 0 or not (x1 > x0 and y1 > y0):
        return empty(), 0
    ys = _Column(array, 1)
    lo, hi = bisect.bisect_left(ys, y0), bisect.bisect_left(ys, y1)
    if hi <= lo:
        return empty(), 0
    starts = range(lo, hi, SCAN_ROWS)

    def block(start):
        rows = np.asarray(array[start:min(start + SCAN_ROWS, hi)], dtype=DTYPE)
        return rows, (rows[:, 0] >= x0) & (rows[:, 0] < x1)

    counts, kept, total = [], [], 0
    for start in starts:
        rows, inside = block(start)
        n = int(np.count_nonzero(inside))
        counts.append(n)
        total += n
        if total <= limit and n:
            kept.append(rows[inside])
    if total <= limit:
        return (np.ascontiguousarray(np.concatenate(kept)) if kept else empty()), total
    if limit == 0:
        return empty(), total
    # More than limit: the k-th of `limit` evenly spaced matches, found in a second pass.
    wanted = (np.arange(limit, dtype=np.int64) * total) // limit
    out, base = [], 0
    for start, n in zip(starts, counts):
        if n:
            a, b = np.searchsorted(wanted, [base, base + n])
            if b > a:
                rows, inside = block(start)
                out.append(rows[inside][wanted[a:b] - base])
        base += n
    return np.ascontiguousarray(np.concatenate(out)), total


def equivalent_radius(area) -> np.ndarray:
    """The radius of the circle of the same area: sqrt(area / pi) (negative areas count as 0)."""
    return np.sqrt(np.maximum(np.asarray(area, dtype=np.float64), 0.0) / np.pi)


def to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, as_records(array), allow_pickle=False)
    return buffer.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    return _checked(np.load(io.BytesIO(data), allow_pickle=False))


def _checked(array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"a detections file holds an (N, 3) array; this one is {array.shape}")
    return array if array.dtype == DTYPE else array.astype(DTYPE)


# -- storage ------------------------------------------------------------------------------------
def _storage(run):
    return run.tile_table.storage


def batch_name(run, index: int) -> str:
    from .models import result_path

    return result_path(run, f"detections/batch-{int(index):05d}.npy")


def merged_name(run) -> str:
    from .models import result_path

    return result_path(run, MERGED)


def _local_path(storage, name: str) -> str | None:
    try:
        return storage.path(name)
    except (NotImplementedError, AttributeError):
        return None


def _write(storage, name: str, data: bytes) -> str:
    """Store `data` under exactly `name`, replacing what is there. On a local file system the
    file is written beside its final name and renamed over it (atomic); elsewhere the old object
    is deleted and the new one saved."""
    path = _local_path(storage, name)
    if path is None:
        if storage.exists(name):
            storage.delete(name)
        saved = storage.save(name, io.BytesIO(data))
        if saved != name:   # another writer got there between delete and save
            storage.delete(saved)
            raise RuntimeError(f"could not store {name}: the name was taken")
        return saved
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        mode = getattr(storage, "file_permissions_mode", None)
        os.chmod(tmp, mode if mode is not None else 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return name


def _read(storage, name: str) -> np.ndarray:
    with storage.open(name, "rb") as fh:
        return from_npy(fh.read())


def save_batch(run, index: int, array: np.ndarray) -> str:
    """Store one tile batch's detections (replacing its own earlier file); the storage name."""
    return _write(_storage(run), batch_name(run, index), to_npy(array))


def merge(run, batch_count: int) -> str:
    """The batch files 0 .. batch_count-1 (a missing one has no detections) concatenated, sorted
    by y then x, stored as the run's detections.npy; the batch files are deleted afterwards.
    Returns its storage name, or "" when there was no batch file and no merged file yet.
    """
    storage = _storage(run)
    target = merged_name(run)
    names = [batch_name(run, i) for i in range(int(batch_count))]
    present = [name for name in names if storage.exists(name)]
    if storage.exists(target):
        # A merged file is only ever written whole: this is a rerun after a crash.
        for name in present:
            storage.delete(name)
        return target
    if not present:
        return ""
    parts = [_read(storage, name) for name in present]
    merged = sort_records(np.concatenate(parts) if parts else empty())
    del parts
    _write(storage, target, to_npy(merged))
    for name in present:
        storage.delete(name)
    return target


def load(run) -> np.ndarray:
    """The run's detections, (N, 3) float32 sorted by y then x; memory-mapped (read-only) when
    the storage is a local file system. No file: an empty array."""
    if not run.detections:
        return empty()
    storage = run.detections.storage
    name = run.detections.name
    path = _local_path(storage, name)
    if path is not None:
        return _checked(np.load(path, mmap_mode="r", allow_pickle=False))
    return _read(storage, name)


def count(run) -> int:
    """How many records the run's detections file holds (reads the header only)."""
    return len(load(run))
