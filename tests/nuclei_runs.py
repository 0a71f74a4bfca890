"""A finished nuclei-density slide run built in the database (no workers, no slide file): its
plan, tile rows and, optionally, a per-nucleus detections file written the way the engine does
(save_batch per batch, then merge)."""

import numpy as np
from django.utils import timezone

from experiments.models import Slide
from predictions import detections
from predictions.models import BatchResult, Status
from predictions.pipelines import Plan
from tests.factories import PredictionFactory, SlideFactory, SlideRunFactory, pipeline_row

WIDTH, HEIGHT, TILE = 4000, 3000, 500


def random_nuclei(n, seed=0, width=WIDTH, height=HEIGHT):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, width, n), rng.uniform(0, height, n),
                            rng.uniform(20, 200, n)]).astype(np.float32)


def finished_run(experiment, nuclei=None, *, batches=3, mpp=0.5, name="synthetic.svs", slide=None):
    """A succeeded run of nuclei-density on a WIDTH x HEIGHT slide of `experiment` (a row only,
    no file) or on `slide`; with `nuclei` ((N, 3) x, y, area) split over `batches` batch files
    and merged."""
    if slide is None:
        slide = SlideFactory(experiment=experiment, source=None, original_name=name, status=Slide.Status.READY,
                             width=WIDTH, height=HEIGHT, mpp=mpp)
    grid = (-(-slide.height // TILE), -(-slide.width // TILE))
    tiles = [(r, c) for r in range(grid[0]) for c in range(grid[1])][:5]
    plan = Plan(mpp=mpp, analysis_downsample=1.0, tile_size=TILE, mask_downsample=16.0,
                mask_shape=(slide.height // 16, slide.width // 16), grid_shape=grid, tiles=tiles,
                tile_tissue=[1.0] * len(tiles), batch_size=2)
    now = timezone.now()
    # Not submitted by anyone: no user and no parameters (the tests using this run were written
    # against that row).
    prediction = PredictionFactory(experiment=slide.experiment, pipeline=pipeline_row("nuclei-density"), params={},
                                   triggered_by=None, status=Status.SUCCEEDED, finished_at=now)
    run = SlideRunFactory(prediction=prediction, slide=slide, plan=plan.to_json(), finished_at=now)
    for index, batch in enumerate(plan.batches()):
        BatchResult.objects.create(run=run, index=index, rows=[{"nuclei": 7, "tissue_px": 1000, "section_px": 1000, "nuclear_px": 300} for _ in batch],
                                   tiles=len(batch), queue="cpu", started_at=now, finished_at=now, seconds=0.1)
    if nuclei is not None:
        parts = np.array_split(np.asarray(nuclei, np.float32), batches)
        for index, part in enumerate(parts):
            rows = [{"nuclei": len(part), "_detections": part}]
            detections.save_batch(run, index, detections.pop_from_rows(rows))
        run.detections = detections.merge(run, batches)
        run.save(update_fields=["detections"])
    return run
