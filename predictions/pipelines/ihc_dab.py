"""ihc-dab: DAB positivity of IHC slides by colour deconvolution with the slide's own stains."""

from dataclasses import replace

import numpy as np

from predictions.imaging.heatmap import legend_stops, render_heatmap
from predictions.imaging.stain import (MAX_DAB_ANGLE_DEG, DabThresholds, StainEstimate, dab_tile_counts, h_score,
                                       positive_fraction)

from .base import NEGATIVE, POSITIVE, BasePipeline, Figure, Outcome, Param, ParamError, Prepared, TileClasses, TileValue

_DEFAULT = DabThresholds()
BINS = ("negative_px", "weak_px", "moderate_px", "strong_px")
DAB_FIGURES = ("dab_positive_fraction", "dab_weak_fraction", "dab_moderate_fraction", "dab_strong_fraction", "h_score")


class IhcDab(BasePipeline):
    name = "ihc-dab"
    version = "2.0"
    title = "IHC DAB positivity"
    description = (
        "Estimates the slide's own hematoxylin and DAB stain vectors (Macenko) and its glass "
        "white, separates the two stains by colour deconvolution in optical density (log10) on "
        "every tissue tile, and reports the DAB-positive fraction of tissue (glass inside the "
        "section left out), weak / moderate / strong fractions and an H-score (0–300), with a "
        "per-tile positivity heatmap. Thresholds are DAB OD (customary 0.2 / 0.4 / 0.6). Slides "
        "declared H&E are refused; a slide whose second stain is not DAB (more than "
        f"{MAX_DAB_ANGLE_DEG:g}° from it, e.g. eosin) is flagged stain_mismatch and gets no "
        "DAB figures.")
    batch_produces = "tissue pixels per DAB intensity bin, per tile"
    aggregate_produces = "DAB-positive fraction, intensity bins, H-score, positivity heatmap"
    params = (
        replace(BasePipeline.MPP, default=1.0),
        BasePipeline.TILE_SIZE,
        replace(BasePipeline.MIN_TISSUE, default=0.0, help="Tiles with less tissue than this fraction are "
                "skipped (0: every tile with tissue, so the figures cover the whole section)."),
        Param("weak", "float", _DEFAULT.weak, "DAB optical density (log10) where 'weak' staining starts.",
              min=0.0, max=3.0, label="Weak threshold (DAB OD)"),
        Param("moderate", "float", _DEFAULT.moderate, "DAB optical density where 'moderate' starts.",
              min=0.0, max=3.0, label="Moderate threshold (DAB OD)"),
        Param("strong", "float", _DEFAULT.strong, "DAB optical density where 'strong' starts.",
              min=0.0, max=3.0, label="Strong threshold (DAB OD)"),
    )

    figures = (
        *BasePipeline.AREA_FIGURES,
        BasePipeline.TILES_ANALYSED,
        Figure("dab_positive_fraction", "DAB-positive fraction", description="Tissue pixels at least weakly DAB "
               "positive, over all tissue pixels (None when the second stain is not DAB)."),
        Figure("dab_weak_fraction", "Weak fraction", description="Tissue pixels from the weak to the moderate threshold."),
        Figure("dab_moderate_fraction", "Moderate fraction", description="From the moderate to the strong threshold."),
        Figure("dab_strong_fraction", "Strong fraction", description="At or above the strong threshold."),
        Figure("h_score", "H-score (0–300)", description="1 x % weak + 2 x % moderate + 3 x % strong."),
        Figure("stain_mismatch", "Second stain is not DAB",
               description=f"The slide's second stain is more than {MAX_DAB_ANGLE_DEG:g}° from DAB: no DAB figures."),
        Figure("stain_second", "Second stain (estimated)"),
        Figure("stain_dab_angle_deg", "Second stain's angle to DAB (°)", "°"),
        BasePipeline.STAIN_ESTIMATE,
    )
    tile_value = TileValue("dab_positive_fraction", "DAB-positive fraction of tissue", "DAB-positive fraction per tile")
    export_options = (
        Param("threshold", "float", 0.10, "A tile is Positive in QuPath when its DAB-positive fraction of "
              "tissue is at least this.", min=0.0, max=1.0, label="threshold"),
    )

    def parse_params(self, raw):
        params = super().parse_params(raw)
        if not params["weak"] <= params["moderate"] <= params["strong"]:
            raise ParamError("The thresholds must go up: weak ≤ moderate ≤ strong.")
        return params

    def check_stain(self, stain):
        if stain == "he":
            return ("This slide is declared H&E: it has no DAB to measure. Run ihc-dab on "
                    "hematoxylin-DAB slides, or correct the declared stain.")
        return None

    def estimate(self, reader, prepared, low, params, stain):
        stains = self.slide_stains(reader, prepared, low)
        prepared.plan.extras = {"stain": stains.to_json(), "declared_stain": stain,
                                "stain_mismatch": stains.dab_mismatch}

    def process_tiles(self, reader, prepared, indices, params, model=None):
        plan = prepared.plan
        thresholds = DabThresholds(params["weak"], params["moderate"], params["strong"])
        stains = StainEstimate.from_json(plan.extras["stain"])
        return [dab_tile_counts(self.read_tile(reader, plan, i), self.tile_mask(plan, prepared.mask, i),
                                stains, thresholds) for i in indices]

    def aggregate(self, prepared: Prepared, rows, params, model=None, detections=None) -> Outcome:
        plan = prepared.plan
        totals = {key: sum(r[key] for r in rows) for key in ("tissue_px", *BINS)}
        tissue = totals["tissue_px"]
        metrics = self.area_metrics(plan, tissue * plan.analysis_downsample ** 2)
        frac = (lambda k: round(totals[k] / tissue, 6)) if tissue else (lambda k: 0.0)
        stains = StainEstimate.from_json(plan.extras["stain"])
        mismatch = bool(plan.extras.get("stain_mismatch"))
        metrics.update({
            "tiles_analysed": len(rows),
            "dab_positive_fraction": round(frac("weak_px") + frac("moderate_px") + frac("strong_px"), 6),
            "dab_weak_fraction": frac("weak_px"),
            "dab_moderate_fraction": frac("moderate_px"),
            "dab_strong_fraction": frac("strong_px"),
            "h_score": round(h_score(totals["weak_px"], totals["moderate_px"], totals["strong_px"], tissue), 3),
            "stain_mismatch": mismatch,
            "stain_second": stains.second_stain,
            "stain_dab_angle_deg": stains.angles.get("dab_angle"),
            "stain_estimate": stains.method,
        })
        if mismatch:
            # Never report a slide whose second stain is not DAB as "positive": no DAB figures.
            metrics.update({name: None for name in DAB_FIGURES})
        per_tile = [self._positive(r) for r in rows]
        grid = self.tile_grid(plan, [np.nan if v is None or mismatch else v for v in per_tile])
        return Outcome(
            metrics,
            images={"positivity": render_heatmap(grid, vmin=0.0, vmax=1.0, cmap="viridis")},
            legends={"positivity": {"kind": "scale", "label": "DAB-positive fraction of tissue",
                                    "stops": legend_stops(0.0, 1.0, "viridis")}},
        )

    @staticmethod
    def _positive(row: dict) -> float | None:
        return positive_fraction(row)

    def tile_columns(self, row: dict, plan) -> dict:
        value = None if plan.extras.get("stain_mismatch") else self._positive(row)
        return {"dab_positive_fraction": round(value, 6) if value is not None else None}

    def tile_classes(self, records, options, class_names=()):
        threshold = options["threshold"]
        per_tile = [POSITIVE if (v := rec.get("dab_positive_fraction")) is not None and v >= threshold else NEGATIVE
                    for rec in records]
        return TileClasses(per_tile, regions=(POSITIVE,), region_name=f"DAB-positive tiles (≥ {threshold:g} of tissue)")
