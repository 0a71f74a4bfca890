"""Tile classification with a TorchScript model, and a tile loader that overlaps disk and compute.

The same code runs on a GPU worker and, without a GPU, on the CPU.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


def pick_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_torchscript(path: str | Path, device: torch.device) -> torch.jit.ScriptModule:
    """Load a TorchScript model onto device, in eval mode."""
    with warnings.catch_warnings():
        # torch 2.13 flags all of torch.jit as deprecated; the model registry stores TorchScript
        # files, and the warning would otherwise fire once per task in every worker log.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        model = torch.jit.load(str(path), map_location=device)
    model.eval()
    return model


def use_one_cpu_thread_on_gpu(device: torch.device) -> None:
    """On a GPU worker, give torch one CPU thread.

    Why: there torch's CPU threads have next to nothing to compute, but its default (one per
    core) keeps them spinning beside the threads that read tiles, which are what limits the
    model path. Measured on a 16-core machine with an H200 (bench/gpu_path.py): 16 threads
    burnt 21 CPU seconds per 7,000 tiles and slowed the reading; with one, 1.6 seconds.
    """
    if device.type == "cuda":
        torch.set_num_threads(1)


def to_batch_tensor(
    tiles: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device | None = None
) -> torch.Tensor:
    """(N, H, W, 3) uint8 tiles -> (N, 3, H, W) float32 on `device` (the CPU by default),
    scaled to [0, 1] then normalised.

    mean and std are per RGB channel, in [0, 1] units (as in torchvision / model.json). The
    tiles travel as uint8 (a quarter of the bytes of float32, from pinned memory so the copy
    overlaps the previous batch's kernels) and are converted on the device: on a GPU worker
    the CPU does no arithmetic on them.
    """
    array = np.asarray(tiles)
    if array.ndim != 4 or array.shape[3] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 tiles, got {array.dtype} {array.shape}")
    device = device or torch.device("cpu")
    batch = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return ((batch.permute(0, 3, 1, 2).float() / 255.0 - mean_t) / std_t).contiguous()


def classify(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> np.ndarray:
    """Softmax class probabilities (N, C) float32 of a normalised batch; rows sum to 1."""
    with torch.inference_mode():
        batch = batch.to(device)   # already there when to_batch_tensor was given the device
        logits = model(batch)
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy()


def reading_threads(device: torch.device) -> int:
    """How many threads should read tiles ahead of the model on `device` (0: read in the caller).

    Why: on a GPU the CPU has nothing else to do while a batch is classified, and reading (OpenSlide
    plus the per-tile Python) is what limits the model path, so four threads read ahead. On the
    CPU, torch's own threads (one per core) already use every core for the model: threads reading
    ahead only take cores from it, and their hand-offs cost CPU time. Measured on 2 cores with the
    demo model (bench/gpu_path.py): 1,870-2,000 tiles/s reading in the caller, 1,570-1,830 with 1,
    2 or 4 threads reading ahead.
    """
    return 4 if device.type == "cuda" else 0


class PrefetchingTileLoader:
    """Yield (indices, tiles) batches while the next batch is read in background threads.

    read_tile(i) must return an (H, W, 3) uint8 array of the same shape for every i and be safe
    to call from several threads (an OpenSlide handle is). OpenSlide decodes in C with the GIL
    released, so a few threads read tiles truly in parallel while the caller runs the model:
    as long as reading a batch is no slower than classifying one, inference waits on disk only
    for the first batch.

    Batches follow the order of indices; each index is read exactly once. prefetch_batches is how
    many batches are read ahead of the one being consumed; with workers=0 there are no threads:
    each batch is read in the caller when it is asked for (see reading_threads). An exception
    raised by read_tile is raised again in the consumer when its batch is reached. Stopping the iteration early cancels
    reads not yet started and waits for those already running.
    """

    def __init__(
        self,
        read_tile: Callable[[int], np.ndarray],
        indices: Sequence[int],
        batch_size: int,
        *,
        workers: int = 4,
        prefetch_batches: int = 1,
    ) -> None:
        if batch_size < 1 or workers < 0 or prefetch_batches < 0:
            raise ValueError("batch_size must be >= 1, workers and prefetch_batches >= 0")
        self._read_tile = read_tile
        self._indices = list(indices)
        self._batch_size = batch_size
        self._workers = workers
        self._prefetch = prefetch_batches

    def __len__(self) -> int:
        return math.ceil(len(self._indices) / self._batch_size)

    def __iter__(self) -> Iterator[tuple[list[int], np.ndarray]]:
        batches = [
            self._indices[start : start + self._batch_size]
            for start in range(0, len(self._indices), self._batch_size)
        ]
        if self._workers == 0:
            for batch in batches:
                yield batch, np.stack([self._read_tile(i) for i in batch])
            return
        pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="tile-read")
        try:
            pending: deque[tuple[list[int], list[Future[np.ndarray]]]] = deque()
            for batch in batches:
                pending.append((batch, [pool.submit(self._read_tile, i) for i in batch]))
                if len(pending) > self._prefetch:
                    yield self._collect(pending.popleft())
            while pending:
                yield self._collect(pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _collect(item: tuple[list[int], list[Future[np.ndarray]]]) -> tuple[list[int], np.ndarray]:
        batch, futures = item
        return batch, np.stack([future.result() for future in futures])
