"""Model inference: tensors, softmax, the demo model on the real slide, the prefetching loader."""

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch

from predictions.imaging.inference import (
    PrefetchingTileLoader,
    classify,
    load_torchscript,
    pick_device,
    to_batch_tensor,
)

REPO = Path(__file__).resolve().parents[1]
SLIDE = REPO.parent / "shared/data/slides/cmu-1-small-region.svs"
DEMO = REPO / "predictions/demo_model"


@pytest.fixture(scope="module")
def demo():
    meta = json.loads((DEMO / "model.json").read_text())
    device = pick_device()
    return meta, load_torchscript(DEMO / meta["file"], device), device


def read_demo_tile(x: int, y: int) -> np.ndarray:
    """A 64 x 64 tile at 2 um/px: 256 x 256 px at level 0, each 4 x 4 block averaged."""
    with openslide.OpenSlide(str(SLIDE)) as slide:
        region = np.asarray(slide.read_region((x, y), 0, (256, 256)))[..., :3]
    blocks = region.astype(np.float32).reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    return np.rint(blocks).astype(np.uint8)


def test_pick_device():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_to_batch_tensor_layout_and_normalisation():
    tiles = np.zeros((2, 4, 5, 3), np.uint8)
    tiles[0, ..., 0] = 255  # first tile pure red
    batch = to_batch_tensor(tiles, mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 0.5])
    assert batch.shape == (2, 3, 4, 5) and batch.dtype == torch.float32
    assert torch.all(batch[0, 0] == 1.0)  # (1 - 0.5) / 0.5
    assert torch.all(batch[0, 1] == -2.0)  # (0 - 0.5) / 0.25
    assert torch.all(batch[1, 2] == -1.0)
    with pytest.raises(ValueError):
        to_batch_tensor(tiles.astype(np.float32), [0, 0, 0], [1, 1, 1])


def test_classify_returns_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    )  # fmt: skip
    batch = torch.randn(6, 3, 16, 16) * 10
    probs = classify(model.eval(), batch, torch.device("cpu"))
    assert probs.shape == (6, 5) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


def test_demo_model_manifest_matches_the_file():
    meta = json.loads((DEMO / "model.json").read_text())
    data = (DEMO / meta["file"]).read_bytes()
    assert meta["name"] == "tissue-classifier-demo" and meta["version"] == "2"
    assert meta["class_names"] == ["background", "stroma", "cellular"]
    assert hashlib.sha256(data).hexdigest() == meta["sha256"]
    assert len(data) < 500_000


def test_demo_model_tells_glass_from_dense_tissue(demo):
    meta, model, device = demo
    names = meta["class_names"]
    white = np.full((64, 64, 3), 255, np.uint8)
    glass = read_demo_tile(0, 1536)
    dense = read_demo_tile(1100, 1100)  # epidermis, nucleus-rich
    tiles = np.stack([white, glass, dense])
    probs = classify(model, to_batch_tensor(tiles, meta["mean"], meta["std"]), device)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    predicted = [names[i] for i in probs.argmax(axis=1)]
    assert predicted[0] == "background" and predicted[1] == "background"
    assert predicted[2] != "background"
    assert probs[2, names.index("background")] < 0.1


@pytest.mark.parametrize("workers", [0, 4])
def test_loader_yields_every_index_once_in_order(workers):
    order = [7, 3, 9, 0, 5, 2, 8, 1, 6, 4, 11]
    loader = PrefetchingTileLoader(lambda i: np.full((2, 2, 3), i, np.uint8), order, 4, workers=workers)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(indices) for indices, _ in batches] == [4, 4, 3]
    assert [i for indices, _ in batches for i in indices] == order
    for indices, tiles in batches:
        assert tiles.shape == (len(indices), 2, 2, 3)
        assert list(tiles[:, 0, 0, 0]) == indices


def test_loader_reads_the_next_batch_while_the_caller_works():
    started: list[int] = []
    lock = threading.Lock()

    def read(i: int) -> np.ndarray:
        with lock:
            started.append(i)
        return np.zeros((1, 1, 3), np.uint8)

    iterator = iter(PrefetchingTileLoader(read, list(range(8)), batch_size=2, workers=2))
    first, _ = next(iterator)
    assert first == [0, 1]
    # Without asking for more, the reads of the second batch start in the background.
    deadline = time.monotonic() + 5
    while not {2, 3} <= set(started) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {2, 3} <= set(started)
    assert rest_indices(iterator) == [2, 3, 4, 5, 6, 7]


def test_loader_without_workers_reads_each_batch_in_the_caller_when_asked():
    """On the CPU the model's own threads use every core: nothing is read ahead, in no thread."""
    reads: list[tuple[int, str]] = []

    def read(i: int) -> np.ndarray:
        reads.append((i, threading.current_thread().name))
        return np.zeros((1, 1, 3), np.uint8)

    iterator = iter(PrefetchingTileLoader(read, list(range(6)), batch_size=2, workers=0))
    assert next(iterator)[0] == [0, 1]
    time.sleep(0.1)
    assert [i for i, _ in reads] == [0, 1]
    assert rest_indices(iterator) == [2, 3, 4, 5]
    assert {name for _, name in reads} == {threading.current_thread().name}


def rest_indices(iterator) -> list[int]:
    return [i for indices, _ in iterator for i in indices]


@pytest.mark.parametrize("workers", [0, 4])
def test_loader_reraises_read_errors_and_stops_cleanly(workers):
    def read(i: int) -> np.ndarray:
        if i == 5:
            raise OSError("corrupt tile 5")
        return np.zeros((1, 1, 3), np.uint8)

    seen = []
    with pytest.raises(OSError, match="corrupt tile 5"):
        for indices, _ in PrefetchingTileLoader(read, range(10), batch_size=2, workers=workers):
            seen.extend(indices)
    assert seen == [0, 1, 2, 3]

    iterator = iter(PrefetchingTileLoader(read, range(4), batch_size=2, workers=workers))
    next(iterator)
    iterator.close()  # an early stop must not hang on the pool


def test_loader_reads_real_slide_tiles_in_threads():
    slide = openslide.OpenSlide(str(SLIDE))
    origins = [(x, y) for y in range(0, 2048, 512) for x in range(0, 2048, 512)]

    def read(i: int) -> np.ndarray:
        return np.asarray(slide.read_region(origins[i], 0, (256, 256)))[..., :3]

    try:
        expected = [read(i) for i in range(len(origins))]
        got = dict()
        for indices, tiles in PrefetchingTileLoader(read, range(len(origins)), 5, workers=4):
            got.update(zip(indices, tiles))
        assert sorted(got) == list(range(len(origins)))
        assert all(np.array_equal(got[i], expected[i]) for i in got)
    finally:
        slide.close()
