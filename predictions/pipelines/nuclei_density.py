"""nuclei-density: nuclei on the hematoxylin channel, counted and related to tissue area."""

import numpy as np

from predictions.imaging.heatmap import legend_stops, render_heatmap
from predictions.imaging.nuclei import detect_nuclei
from predictions.imaging.tissue import tissue_mask

from .base import Outcome, Param, Pipeline, Prepared

# Used only to turn the nucleus size bounds into pixels when a slide has no pixel size; the
# figures of such a slide are flagged mpp_missing and reported per pixel, never per mm².
ASSUMED_MPP_FOR_SIZE_BOUNDS = 0.5


class NucleiDensity(Pipeline):
    name = "nuclei-density"
    version = "1.0"
    title = "Nuclei density"
    description = ("Detects nuclei on the hematoxylin channel (threshold, then watershed to split "
                   "touching nuclei) in tissue tiles, and reports their count and density per mm² "
                   "of tissue, with a density heatmap.")
    batch_produces = "nuclei count and tissue pixels per tile"
    aggregate_produces = "nuclei count, density per mm² of tissue, density heatmap"
    params = (
        Pipeline.MPP,
        Pipeline.TILE_SIZE,
        Pipeline.MIN_TISSUE,
        Param("min_area_um2", "float", 12.0, "Smaller objects are not counted as nuclei (µm²).",
              min=1.0, max=500.0, label="Smallest nucleus (µm²)"),
        Param("max_area_um2", "float", 400.0, "Larger objects are not counted as nuclei (µm²).",
              min=10.0, max=5000.0, label="Largest nucleus (µm²)"),
    )

    def process_tiles(self, reader, plan, indices, params, model=None):
        px_um2 = ((plan.mpp or ASSUMED_MPP_FOR_SIZE_BOUNDS) * plan.analysis_downsample) ** 2
        rows = []
        for i in indices:
            rgb = self.read_tile(reader, plan, i)
            tissue = tissue_mask(rgb)
            centroids = detect_nuclei(rgb, tissue=tissue,
                                      min_area_px=max(1, round(params["min_area_um2"] / px_um2)),
                                      max_area_px=max(2, round(params["max_area_um2"] / px_um2)))
            rows.append({"nuclei": int(len(centroids)), "tissue_px": int(tissue.sum())})
        return rows

    def aggregate(self, prepared: Prepared, rows, params, model=None) -> Outcome:
        plan = prepared.plan
        count = sum(r["nuclei"] for r in rows)
        tissue_px0 = sum(r["tissue_px"] for r in rows) * plan.analysis_downsample ** 2
        metrics = self.area_metrics(plan, tissue_px0)
        area = metrics["tissue_area_mm2"]
        metrics.update({
            "tiles_analysed": len(rows),
            "nuclei_count": count,
            "nuclei_per_mm2": round(count / area, 3) if area else None,
            "nuclei_per_mpx": round(count / (tissue_px0 / 1e6), 3) if tissue_px0 else None,
        })
        unit_px = plan.analysis_downsample ** 2 * (plan.mpp ** 2 / 1e6 if plan.mpp else 1e-6)
        density = [r["nuclei"] / (r["tissue_px"] * unit_px) if r["tissue_px"] else np.nan for r in rows]
        grid = self.tile_grid(plan, density)
        finite = grid[np.isfinite(grid)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        unit = "nuclei per mm² of tissue" if plan.mpp else "nuclei per million tissue pixels"
        return Outcome(
            metrics,
            images={"density": render_heatmap(grid, vmin=0.0, vmax=max(vmax, 1e-9), cmap="magma")},
            legends={"density": {"kind": "scale", "label": unit,
                                 "stops": legend_stops(0.0, max(vmax, 1e-9), "magma")}},
        )
