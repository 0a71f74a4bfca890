"""ihc-dab: DAB positivity of IHC slides by colour deconvolution, with an H-score."""

from dataclasses import replace

import numpy as np

from predictions.imaging.heatmap import legend_stops, render_heatmap
from predictions.imaging.stain import DabThresholds, dab_tile_counts, h_score

from .base import Outcome, Param, ParamError, Pipeline, Prepared

_DEFAULT = DabThresholds()
BINS = ("negative_px", "weak_px", "moderate_px", "strong_px")


class IhcDab(Pipeline):
    name = "ihc-dab"
    version = "1.0"
    title = "IHC DAB positivity"
    description = ("Separates hematoxylin and DAB by colour deconvolution on tissue tiles, then "
                   "reports the DAB-positive fraction of tissue, weak/moderate/strong fractions "
                   "and an H-score (0–300), with a per-tile positivity heatmap.")
    batch_produces = "tissue pixels per DAB intensity bin, per tile"
    aggregate_produces = "DAB-positive fraction, intensity bins, H-score, positivity heatmap"
    params = (
        replace(Pipeline.MPP, default=1.0),
        Pipeline.TILE_SIZE,
        Pipeline.MIN_TISSUE,
        Param("weak", "float", _DEFAULT.weak, "DAB optical density where 'weak' staining starts.",
              min=0.0, max=2.0, label="Weak threshold (DAB OD)"),
        Param("moderate", "float", _DEFAULT.moderate, "DAB optical density where 'moderate' starts.",
              min=0.0, max=2.0, label="Moderate threshold (DAB OD)"),
        Param("strong", "float", _DEFAULT.strong, "DAB optical density where 'strong' starts.",
              min=0.0, max=2.0, label="Strong threshold (DAB OD)"),
    )

    def parse_params(self, raw):
        params = super().parse_params(raw)
        if not params["weak"] <= params["moderate"] <= params["strong"]:
            raise ParamError("The thresholds must go up: weak ≤ moderate ≤ strong.")
        return params

    def process_tiles(self, reader, plan, indices, params, model=None):
        thresholds = DabThresholds(params["weak"], params["moderate"], params["strong"])
        return [dab_tile_counts(self.read_tile(reader, plan, i), None, thresholds) for i in indices]

    def aggregate(self, prepared: Prepared, rows, params, model=None) -> Outcome:
        plan = prepared.plan
        totals = {key: sum(r[key] for r in rows) for key in ("tissue_px", *BINS)}
        tissue = totals["tissue_px"]
        metrics = self.area_metrics(plan, tissue * plan.analysis_downsample ** 2)
        frac = (lambda k: round(totals[k] / tissue, 6)) if tissue else (lambda k: 0.0)
        metrics.update({
            "tiles_analysed": len(rows),
            "dab_positive_fraction": round(frac("weak_px") + frac("moderate_px") + frac("strong_px"), 6),
            "dab_weak_fraction": frac("weak_px"),
            "dab_moderate_fraction": frac("moderate_px"),
            "dab_strong_fraction": frac("strong_px"),
            "h_score": round(h_score(totals["weak_px"], totals["moderate_px"], totals["strong_px"], tissue), 3),
        })
        per_tile = [
            (r["weak_px"] + r["moderate_px"] + r["strong_px"]) / r["tissue_px"] if r["tissue_px"] else np.nan
            for r in rows
        ]
        grid = self.tile_grid(plan, per_tile)
        return Outcome(
            metrics,
            images={"positivity": render_heatmap(grid, vmin=0.0, vmax=1.0, cmap="viridis")},
            legends={"positivity": {"kind": "scale", "label": "DAB-positive fraction of tissue",
                                    "stops": legend_stops(0.0, 1.0, "viridis")}},
        )

    @staticmethod
    def tile_columns(row: dict) -> dict:
        pos = row["weak_px"] + row["moderate_px"] + row["strong_px"]
        return {"dab_positive_fraction": round(pos / row["tissue_px"], 6) if row["tissue_px"] else None}
