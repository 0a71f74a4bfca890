"""hematoxylin-area: how much of the tissue is hematoxylin-stained, by colour deconvolution with
the slide's own stain vectors.

A pipeline a lab writes in its own package, outside Histo-IA: it uses only the pipeline contract
(predictions.pipelines.base) and Histo-IA's imaging helpers (optical density, stain estimates,
heatmaps), and registers itself under the `histoia.pipelines` entry-point group (pyproject.toml).
Plain Python: no Django, no Celery. Every step is a pure function of the slide and the plan, so
a batch delivered twice gives the same rows, and a batch holds one tile in memory at a time.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from predictions.imaging.heatmap import legend_stops, render_heatmap
from predictions.imaging.stain import GLASS_OD, StainEstimate, concentrations, optical_density
from predictions.pipelines.base import (BasePipeline, Figure, Outcome, Param, PathClass, Prepared,
                                        TileClasses, TileValue)

# A pixel is hematoxylin-positive from this hematoxylin OD (log10) up: it lets through at most
# 10^-0.2 = 63 % of the light along the hematoxylin vector. The value is a convention, the same on
# every slide and not fitted to any image: the customary OD from which DAB counts as weakly
# positive (ihc-dab's default, as QuPath's), so a pixel counts as stained by either stain from
# the same optical density. Hematoxylin also counterstains cytoplasm and stroma, and where
# they take up this much (the purple dermis of the shared H&E slide does) they count too: a lab
# that wants nuclear-strength hematoxylin only raises it.
THRESHOLD_OD = 0.2
# A tile is "Hematoxylin-rich" in QuPath when hematoxylin-positive pixels make up at least half of
# its tissue: the majority, a cut that needs no tuning. The user changes it at download (?cutoff=).
RICH_CUTOFF = 0.5

RICH: PathClass = ("Hematoxylin-rich", (80, 60, 160))
POOR: PathClass = ("Hematoxylin-poor", (190, 180, 215))
CMAP = "viridis"


class HematoxylinArea(BasePipeline):
    name = "hematoxylin-area"
    version = "1.0"
    title = "Hematoxylin area"
    description = (
        "Estimates the slide's own hematoxylin and second-stain vectors and its glass white "
        "(Macenko, on tissue windows spread over the slide), separates hematoxylin by colour "
        "deconvolution in optical density (log10), and on every tile with tissue counts the "
        "tissue pixels (inside the tissue mask and not glass: OD vector at least "
        f"{GLASS_OD:g} long) whose hematoxylin OD is at least a threshold ({THRESHOLD_OD:g} by "
        "default, the OD from which DAB counts as weakly positive: at most 63 % of the light "
        "passes). Counterstained cytoplasm and stroma that reach it count as well as nuclei. "
        "Reports the hematoxylin-positive area in mm² and as a fraction of the tissue area, "
        "with a per-tile heatmap. Figures are per pixel, so they do not depend on the "
        "tiling, but they do on the analysis resolution (0.5 µm/px by default): at a coarser "
        "one, nuclei are averaged with what surrounds them. "
        "In QuPath, tiles are Hematoxylin-rich when their fraction reaches a cut-off "
        f"({RICH_CUTOFF:g} by default, set at download), and those tiles are merged into a region.")
    batch_produces = "tissue and hematoxylin-positive pixels per tile"
    aggregate_produces = "hematoxylin-positive area and fraction of tissue, heatmap"
    params = (
        BasePipeline.MPP,
        BasePipeline.TILE_SIZE,
        replace(BasePipeline.MIN_TISSUE, default=0.0, help="Tiles with less tissue than this fraction are "
                "skipped (0: every tile with tissue, so the figures cover the whole section)."),
        Param("threshold_od", "float", THRESHOLD_OD, "A tissue pixel is hematoxylin-positive from this "
              "hematoxylin optical density (log10) up.", min=0.01, max=3.0,
              label="Hematoxylin threshold (OD)"),
    )

    figures = (
        *BasePipeline.AREA_FIGURES,
        BasePipeline.TILES_ANALYSED,
        Figure("hematoxylin_area_fraction", "Hematoxylin-positive fraction of tissue",
               description="Tissue pixels at or above the hematoxylin threshold, over all tissue pixels "
                           "(glass inside the section left out); empty without tissue."),
        Figure("hematoxylin_area_mm2", "Hematoxylin-positive area (mm²)", "mm²",
               "Area of those pixels; empty when the slide has no pixel size."),
        Figure("hematoxylin_area_px", "Hematoxylin-positive area (px)", "px", "The same in level-0 pixels."),
        BasePipeline.STAIN_ESTIMATE,
    )
    tile_value = TileValue("hematoxylin_area_fraction", "Hematoxylin-positive fraction of tissue",
                           "Hematoxylin-positive fraction per tile")
    export_options = (
        Param("cutoff", "float", RICH_CUTOFF, "A tile is Hematoxylin-rich in QuPath when at least this "
              "fraction of its tissue is hematoxylin-positive.", min=0.0, max=1.0,
              label="Hematoxylin-rich cut-off"),
    )

    # -- step 1: per slide, after the tissue mask and the tile grid ---------------------------
    def estimate(self, reader, prepared, low, params, stain):
        # The slide's own vectors: hematoxylin drifts between protocols and scanners, and the
        # wrong vector leaks eosin (or DAB) into hematoxylin.
        stains = self.slide_stains(reader, prepared, low)
        prepared.plan.extras = {"stain": stains.to_json(), "declared_stain": stain}

    # -- step 2: a batch of tiles -------------------------------------------------------------
    def process_tiles(self, reader, prepared, indices, params, model=None):
        plan = prepared.plan
        stains = StainEstimate.from_json(plan.extras["stain"])
        # Hematoxylin against the slide's own second stain (eosin, DAB; reference eosin if none).
        matrix = stains.own_matrix().astype(np.float32)
        threshold = params["threshold_od"]
        rows = []
        for i in indices:
            od = optical_density(self.read_tile(reader, plan, i), stains.white)
            hematoxylin = concentrations(od, matrix)[..., 0]
            tissue = self.tile_mask(plan, prepared.mask, i) & (np.linalg.norm(od, axis=2) >= GLASS_OD)
            values = hematoxylin[tissue]
            rows.append({
                "tissue_px": int(values.size),
                "hematoxylin_px": int(np.count_nonzero(values >= threshold)),
            })
        return rows

    def tile_columns(self, row: dict, plan) -> dict:
        fraction = self._fraction(row)
        return {"hematoxylin_area_fraction": round(fraction, 6) if fraction is not None else None}

    def tile_classes(self, records, options, class_names=()):
        cutoff = options["cutoff"]
        fractions = [rec.get("hematoxylin_area_fraction") for rec in records]
        # A tile without tissue pixels has no fraction: left unclassified, neither rich nor poor.
        per_tile = [None if v is None else RICH if v >= cutoff else POOR for v in fractions]
        return TileClasses(per_tile, regions=(RICH,),
                           region_name=f"Hematoxylin-rich tiles (≥ {cutoff:g} of tissue)")

    # -- step 3: the slide's figures ----------------------------------------------------------
    def aggregate(self, prepared: Prepared, rows, params, model=None, detections=None) -> Outcome:
        plan = prepared.plan
        px0 = plan.analysis_downsample ** 2     # level-0 pixels per analysed pixel
        tissue = sum(r["tissue_px"] for r in rows)
        positive = sum(r["hematoxylin_px"] for r in rows)
        metrics = self.area_metrics(plan, tissue * px0)
        metrics.update({
            "tiles_analysed": len(rows),
            "hematoxylin_area_fraction": round(positive / tissue, 6) if tissue else None,
            "hematoxylin_area_mm2": round(positive * px0 * plan.mpp ** 2 / 1e6, 6) if plan.mpp else None,
            "hematoxylin_area_px": int(round(positive * px0)),
            "stain_estimate": StainEstimate.from_json(plan.extras["stain"]).method,
        })
        grid = self.tile_grid(plan, [np.nan if (v := self._fraction(r)) is None else v for r in rows])
        return Outcome(
            metrics,
            images={"hematoxylin": render_heatmap(grid, vmin=0.0, vmax=1.0, cmap=CMAP)},
            legends={"hematoxylin": {"kind": "scale", "label": "Hematoxylin-positive fraction of tissue",
                                     "stops": legend_stops(0.0, 1.0, CMAP)}},
        )

    @staticmethod
    def _fraction(row: dict) -> float | None:
        return row["hematoxylin_px"] / row["tissue_px"] if row["tissue_px"] else None
