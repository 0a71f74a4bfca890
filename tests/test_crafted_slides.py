"""Hostile and oversized slide files: memory stays bounded whatever a file declares.

Files are made on the fly (tests/bad_files.py): a few hundred KB each, declaring up to
100,000 x 100,000 px without a usable pyramid. They go through the real path: uploaded to a
gunicorn web process, checked by the real cpu worker (converted to a pyramid, or refused with
the reason), then shown in the viewer. Each process's peak resident memory (the kernel's VmHWM,
reset before the run) must stay under 1 GB.
"""

import math
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests import bad_files
from tests.conftest import REPO, free_port, healthz_answers, http_login, wait_for

GB = 1024 ** 3
pytestmark = pytest.mark.timeout(600)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
    return found


def _reset_peak(pids):
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.fixture
def web(celery_workers):
    """One gunicorn web process as deployed (docker/), on the test database and media."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(celery_workers.env, PATH=f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["gunicorn", "histoia.wsgi:application", f"--bind=127.0.0.1:{port}", "--workers=1",
                             "--threads=4"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: healthz_answers(base), timeout=60, message="gunicorn up")
        yield base, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_crafted_files_end_ready_or_invalid_within_1_gb(workers, web, experiment, alice, tmp_path):
    from experiments.models import Slide

    base, gunicorn = web
    files = {
        "single-level-20000.tif": bad_files.single_level_tiled_tiff(tmp_path, 20_000),
        "plain-12000.png": bad_files.large_plain_image(tmp_path, 12_000, "png"),
        "plain-12000.jpg": bad_files.large_plain_image(tmp_path, 12_000, "jpeg"),
        "single-level-100000.tif": bad_files.single_level_tiled_tiff(tmp_path, 100_000),
        "declares-100000.png": bad_files.huge_declared_png(tmp_path),
        "cut.tif": bad_files.single_level_tiled_tiff(tmp_path, 20_000, "cut.tif", cut_after=2_000),
    }
    assert max(path.stat().st_size for path in files.values()) < 3 * 1024 ** 2  # small files, huge images
    worker_pids = _descendants(workers.procs["cpu"].pid)
    _reset_peak(worker_pids)

    http = http_login(base, alice.username)
    csrf = {"X-CSRFToken": http.cookies["csrftoken"], "Referer": base}
    for name, path in files.items():
        with open(path, "rb") as fh:
            response = http.post(f"{base}/api/v1/experiments/{experiment.pk}/slides/", files={"files": (name, fh)},
                                 headers=csrf)
        assert response.status_code == 201, response.text

    slides = Slide.objects.filter(experiment=experiment)
    wait_for(lambda: not slides.filter(status=Slide.Status.PENDING).exists(), timeout=300,
             message="the crafted slides to be checked")
    by_name = {s.original_name: s for s in slides}

    # No pyramid, within the conversion limit: converted, lossless, the original file gone.
    for name in ("single-level-20000.tif", "plain-12000.png", "plain-12000.jpg"):
        slide = by_name[name]
        assert slide.status == Slide.Status.READY, (name, slide.error)
        assert "converted" in slide.conversion.lower() and slide.level_count > 4
        assert slide.file.name.endswith(".tiff") and slide.thumbnail
        assert [p.name for p in Path(slide.file.path).parent.iterdir()] == [Path(slide.file.name).name]
    assert by_name["plain-12000.png"].mpp is None  # a PNG's print resolution is no pixel size
    assert (by_name["single-level-20000.tif"].width, by_name["single-level-20000.tif"].height) == (20_000, 20_000)

    # Beyond it, or broken: invalid, with the reason where the lab sees it.
    for name in ("single-level-100000.tif", "declares-100000.png"):
        slide = by_name[name]
        assert slide.status == Slide.Status.INVALID
        assert "100,000 x 100,000 px" in slide.error and "pyramid" in slide.error
    assert by_name["cut.tif"].status == Slide.Status.INVALID
    assert "damaged or truncated" in by_name["cut.tif"].error
    page = http.get(f"{base}/experiments/{experiment.pk}/slides/")
    assert "damaged or truncated" in page.text and "converted to a pyramid" in page.text

    # The viewer: every tile of the zoomed-out levels (the ones that read most of the slide),
    # and a few at full resolution.
    for name in ("single-level-20000.tif", "plain-12000.png"):
        slide = by_name[name]
        assert http.get(f"{base}/experiments/slides/{slide.pk}/slide.dzi").status_code == 200
        top = math.ceil(math.log2(max(slide.width, slide.height)))  # Deep Zoom's full-resolution level
        for level in range(top + 1):
            side = math.ceil(max(slide.width, slide.height) / 2 ** (top - level))  # the slides are square
            tiles = math.ceil(side / 254)
            addresses = [(c, r) for c in range(tiles) for r in range(tiles)] if tiles <= 4 else [(0, 0), (tiles - 1, tiles - 1)]
            for col, row in addresses:
                tile = http.get(f"{base}/experiments/slides/{slide.pk}/dzi/{level}/{col}_{row}.jpeg")
                assert tile.status_code == 200 and tile.content[:2] == b"\xff\xd8", (name, level, col, row)

    peaks = {f"cpu worker {pid}": _peak_bytes(pid) for pid in worker_pids if Path(f"/proc/{pid}").exists()}
    peaks.update({f"web {pid}": _peak_bytes(pid) for pid in _descendants(gunicorn.pid)})
    print("peak resident memory:", {k: f"{v / 2**20:.0f} MB" for k, v in peaks.items()})
    assert all(peak < GB for peak in peaks.values()), peaks


@pytest.mark.parametrize("downsample", [1.0, 1.7, 2.0, 2.6, 5.3])
def test_a_level_larger_than_the_cap_is_read_in_bands_with_the_same_pixels(monkeypatch, tmp_path, downsample):
    """read_downsampled over a level above MAX_REGION_PIXELS reads bands of rows, never more than
    the cap at once, and gives exactly what resizing the whole level at once gives."""
    import numpy as np
    import openslide
    from PIL import Image

    from experiments import slide_files
    from predictions.imaging.synthetic import write_slide

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    path = write_slide(tmp_path / "textured.tiff", rgb, 0.5)      # levels 3000, 1500, 750, 375 px wide
    monkeypatch.setattr(slide_files, "MAX_REGION_PIXELS", 200_000)
    read = []
    original = slide_files.SlideReader.read_region
    monkeypatch.setattr(slide_files.SlideReader, "read_region",
                        lambda self, loc, level, size: read.append(size[0] * size[1]) or original(self, loc, level, size))

    with slide_files.SlideReader(path) as reader:
        banded, _ = reader.read_downsampled(downsample)
        level = reader.best_level_for_downsample(downsample)
    with openslide.OpenSlide(str(path)) as slide:
        whole = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]))[..., :3]
    expected = np.asarray(Image.fromarray(np.ascontiguousarray(whole)).resize(
        (banded.shape[1], banded.shape[0]), Image.Resampling.BOX))
    assert len(read) > 1 and max(read) <= 200_000              # in bands, each within the cap
    assert np.array_equal(banded, expected)
