"""Run a pipeline on one slide file in this process, step by step, as the queues would.

For pipeline authors and tests: no database, no broker. The steps see exactly what they see when
the platform runs them: the plan and every tile row go through JSON (they are stored as JSON
between steps), batches follow the plan's own batching, and each row's "_detections" are taken
out and handed to aggregate sorted by y then x, as the platform stores them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.slide_files import SlideReader
from predictions.detections import pop_from_rows, sort_records

from .base import BasePipeline, ModelSpec, Outcome, Prepared, Plan


@dataclass
class SlideResult:
    prepared: Prepared
    params: dict
    rows: list[dict]                  # every tile row, in tile order, as stored
    detections: np.ndarray | None     # (N, 3) float32 x, y, area (level-0), or None
    outcome: Outcome
    width: int
    height: int


def run_slide(pipeline: BasePipeline, path: str | Path, params: dict | None = None,
              model: ModelSpec | None = None, stain: str = "") -> SlideResult:
    """prepare, every batch of tiles, then aggregate, on the slide at `path`."""
    params = pipeline.parse_params(params)
    found = []
    with SlideReader(path) as reader:
        first = pipeline.prepare(reader, params, model, stain)
        prepared = Prepared(Plan.from_json(json.loads(json.dumps(first.plan.to_json()))), first.mask)
        rows: list[dict] = []
        if pipeline.is_tiled:
            for batch in prepared.plan.batches():
                batch_rows = pipeline.process_tiles(reader, prepared, batch, params, model)
                records = pop_from_rows(batch_rows)
                if records is not None:
                    found.append(records)
                rows.extend(json.loads(json.dumps(batch_rows)))
        width, height = reader.info.width, reader.info.height
    detections = sort_records(np.concatenate(found)) if found else None
    outcome = pipeline.aggregate(prepared, rows, params, model, detections=detections)
    return SlideResult(prepared, params, rows, detections, outcome, width, height)
