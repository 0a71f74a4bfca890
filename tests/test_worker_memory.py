"""Worker processes keep freed memory for reuse (histoia/malloc.py): a tile batch's large arrays
are not faulted in again from the kernel on every tile."""

import os
import subprocess
import sys
import textwrap

import pytest

from histoia.malloc import keep_freed_memory

ROUNDS, LAYERS, LAYER_MB = 20, 3, 8

# What a batch does to memory, round after round: three 8 MiB arrays alive at once (a model's
# activations, a tile stack and its float copy), then all freed.
BATCHES = textwrap.dedent(f"""
    import resource, sys
    import numpy as np
    from histoia.malloc import keep_freed_memory

    print(keep_freed_memory(int(sys.argv[1]), int(sys.argv[2])))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        layers = [np.ones({LAYER_MB} << 20, np.uint8) for _ in range({LAYERS})]
        del layers
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def run_batches(mmap_mb: int, trim_mb: int, **env) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", BATCHES, str(mmap_mb), str(trim_mb)], check=True, text=True,
                         capture_output=True, env={**clean, "DEBUG": "1", **env}).stdout.split("\n")
    return out[0], int(out[1])


def test_arrays_freed_by_one_batch_are_reused_by_the_next_without_page_faults(settings):
    done, faults = run_batches(settings.WORKER_MALLOC_MMAP_THRESHOLD_MB, settings.WORKER_MALLOC_TRIM_THRESHOLD_MB)
    if done.startswith("the C library's own"):
        pytest.skip(f"not glibc: {done}")
    assert done.startswith("blocks under"), done
    # One round's pages are faulted in once, then reused; glibc's own limits fault them in again
    # in every round (21,000 faults here against 1,500).
    one_round = LAYERS * (LAYER_MB << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults < one_round, f"{faults} page faults for {ROUNDS} rounds of {one_round} pages"


def test_malloc_limits_set_where_the_worker_is_started_are_kept():
    done, _ = run_batches(32, 64, MALLOC_TRIM_THRESHOLD_="1048576")
    assert done == "malloc thresholds from the environment"


def test_zero_leaves_glibcs_own_limits():
    assert keep_freed_memory(0, 64) == "glibc's own malloc thresholds (turned off in the settings)"



def test_every_worker_says_in_its_log_how_it_keeps_memory(workers, settings):
    """An admin reads it at the top of the worker's log; the pool's processes inherit it."""
    expected = (f"worker memory: blocks under {settings.WORKER_MALLOC_MMAP_THRESHOLD_MB} MiB from the heap, "
                f"up to {settings.WORKER_MALLOC_TRIM_THRESHOLD_MB} MiB freed kept for reuse")
    for kind in ("cpu", "gpu"):
        lines = [line for line in (workers.log_dir / f"worker-{kind}.log").read_text().splitlines()
                 if "worker memory:" in line]
        assert lines and lines[-1].endswith(expected), (kind, lines[-1:])
