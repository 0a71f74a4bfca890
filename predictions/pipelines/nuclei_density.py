"""nuclei-density: nuclei found on hematoxylin OD, counted and related to the section's area."""

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from predictions.imaging.heatmap import legend_stops, render_heatmap
from predictions.imaging.nuclei import NucleusSettings, detect_nuclei
from predictions.imaging.stain import StainEstimate, concentrations, optical_density

from .base import BasePipeline, Figure, Outcome, Param, Prepared, TileValue

# Only for slides without a pixel size: sizes in µm are turned into pixels as if the slide were
# at this resolution (20x). Such slides are flagged mpp_missing and get no per-mm² figure.
ASSUMED_MPP = 0.5


class NucleiDensity(BasePipeline):
    name = "nuclei-density"
    version = "2.0"
    title = "Nuclei density"
    description = (
        "Separates hematoxylin by colour deconvolution with the slide's own stain vectors "
        "(Macenko) in optical density, and finds nuclei where hematoxylin OD passes an absolute "
        "threshold and stands out from its local background (as QuPath's cell detection does), "
        "splitting touching nuclei by a distance-transform watershed; sizes in µm and µm². Every "
        "tile with tissue is analysed with a margin, so the count does not depend on the tiling. "
        "Reports the count, the density per mm² of section (holes inside the section, such as "
        "fat and lumina, count as section), the nuclear area fraction and the median nucleus "
        "area, with a density heatmap and every nucleus (centroid, area) for the viewer and "
        "QuPath.")
    batch_produces = "nuclei (centroid, area) and section area per tile"
    aggregate_produces = "nuclei count, density per mm² of section, nuclear area fraction, density heatmap"
    params = (
        BasePipeline.MPP,
        BasePipeline.TILE_SIZE,
        replace(BasePipeline.MIN_TISSUE, default=0.0, help="Tiles with less tissue than this fraction are "
                "skipped (0: every tile with tissue, so every nucleus of the section is counted)."),
        Param("min_area_um2", "float", 10.0, "Smaller objects are not counted as nuclei (µm²).",
              min=1.0, max=500.0, label="Smallest nucleus (µm²)"),
        Param("max_area_um2", "float", 500.0, "Larger objects are not counted as nuclei (µm²).",
              min=10.0, max=5000.0, label="Largest nucleus (µm²)"),
        Param("hematoxylin_od", "float", 0.2, "A nucleus reaches at least this hematoxylin optical "
              "density (log10), or 0.35 x the slide's 99th-percentile hematoxylin OD when that is "
              "higher.", min=0.02, max=3.0, label="Hematoxylin threshold (OD)"),
        Param("local_contrast_od", "float", 0.08, "…and stands this far above the hematoxylin "
              "background around it (OD; or 0.1 x the slide's 99th percentile when higher).",
              min=0.0, max=3.0, label="Contrast to background (OD)"),
        Param("split_prominence_um", "float", 0.6, "Touching nuclei are split where the neck between "
              "them is at least this much narrower than their radius (µm).", min=0.1, max=10.0,
              label="Split touching nuclei (µm)"),
    )

    figures = (
        *BasePipeline.AREA_FIGURES,
        BasePipeline.TILES_ANALYSED,
        Figure("nuclei_count", "Nuclei", description="Nuclei found on the section."),
        Figure("nuclei_per_mm2", "Nuclei per mm²", "1/mm²", "Nuclei per mm² of section (holes filled)."),
        Figure("nuclei_per_mpx", "Nuclei per Mpx", "1/Mpx", "The same per million level-0 pixels (no pixel size)."),
        Figure("nuclear_area_fraction", "Nuclear area fraction", description="Nuclear area over section area."),
        Figure("nucleus_area_um2_median", "Median nucleus area (µm²)", "µm²"),
        Figure("nucleus_area_px_median", "Median nucleus area (px)", "px"),
        BasePipeline.STAIN_ESTIMATE,
    )
    tile_value = TileValue("nuclei", "nuclei in the tile", "Nuclei per tile")
    detection_class = ("Nucleus", (60, 110, 230))

    # Thresholds are scaled per slide (never per tile) to how dark its nuclei are stained: a
    # nuclear core reaches at least this fraction of the slide's 99th-percentile hematoxylin OD,
    # and stands out from its background by at least LOCAL_FRACTION of it. The parameters are
    # the floors, so that a slide with little or no hematoxylin finds nothing, not noise.
    CORE_FRACTION = 0.35
    LOCAL_FRACTION = 0.1

    def settings(self, params: dict, analysis_mpp: float | None, hematoxylin_p99: float = 0.0) -> NucleusSettings:
        return NucleusSettings(
            mpp=analysis_mpp or ASSUMED_MPP, min_area_um2=params["min_area_um2"],
            max_area_um2=params["max_area_um2"],
            hematoxylin_od=max(params["hematoxylin_od"], self.CORE_FRACTION * hematoxylin_p99),
            local_contrast_od=max(params["local_contrast_od"], self.LOCAL_FRACTION * hematoxylin_p99),
            split_prominence_um=params["split_prominence_um"])

    def estimate(self, reader, prepared, low, params, stain):
        plan = prepared.plan
        stains = self.slide_stains(reader, prepared, low)
        section = ndi.binary_fill_holes(prepared.mask)
        plan.extras = {"stain": stains.to_json(), "declared_stain": stain,
                       "section_px0": round(self.mask_area_px0(plan, section)),
                       "margin_px": self.settings(params, plan.analysis_mpp).reach_px}

    def process_tiles(self, reader, prepared, indices, params, model=None):
        plan = prepared.plan
        stains = StainEstimate.from_json(plan.extras["stain"])
        settings = self.settings(params, plan.analysis_mpp, stains.hematoxylin_p99)
        matrix = stains.own_matrix().astype(np.float32)
        section = ndi.binary_fill_holes(prepared.mask)
        margin, n = plan.extras["margin_px"], plan.tile_size
        ds = plan.analysis_downsample
        rows = []
        for i in indices:
            rgb = self.read_tile(reader, plan, i, margin)
            hema = concentrations(optical_density(rgb, stains.white), matrix)[..., 0]
            on_section = self.tile_mask(plan, section, i, margin)
            nuclei = detect_nuclei(hema, settings, core=(margin, margin, margin + n, margin + n), section=on_section)
            r, c = plan.tiles[i]
            x0, y0 = c * plan.tile_size_level0, r * plan.tile_size_level0
            # Level-0 coordinates: pixel centres, so a centroid of (0, 0) is x0 + ds / 2.
            ys = y0 + (nuclei.centroids[:, 0] - margin + 0.5) * ds
            xs = x0 + (nuclei.centroids[:, 1] - margin + 0.5) * ds
            areas = nuclei.areas_px * ds ** 2
            rows.append({
                "nuclei": int(len(areas)),
                "section_px": int(on_section[margin:margin + n, margin:margin + n].sum()),
                "nuclear_px": int(nuclei.areas_px.sum()),
                "_detections": np.stack([xs, ys, areas], axis=1).astype(np.float32).reshape(-1, 3),
            })
        return rows

    def aggregate(self, prepared: Prepared, rows, params, model=None, detections=None) -> Outcome:
        plan = prepared.plan
        count = sum(r["nuclei"] for r in rows)
        section_px0 = float(plan.extras["section_px0"])
        metrics = self.area_metrics(plan, section_px0)
        area_mm2 = metrics["tissue_area_mm2"]
        nuclear_px0 = sum(r["nuclear_px"] for r in rows) * plan.analysis_downsample ** 2
        areas_px0 = detections[:, 2] if detections is not None and len(detections) else np.zeros(0)
        median_px0 = float(np.median(areas_px0)) if areas_px0.size else None
        metrics.update({
            "tiles_analysed": len(rows),
            "nuclei_count": count,
            "nuclei_per_mm2": round(count / area_mm2, 3) if area_mm2 else None,
            "nuclei_per_mpx": round(count / (section_px0 / 1e6), 3) if section_px0 else None,
            "nuclear_area_fraction": round(nuclear_px0 / section_px0, 6) if section_px0 else None,
            "nucleus_area_um2_median": (round(median_px0 * plan.mpp ** 2, 2)
                                        if median_px0 is not None and plan.mpp else None),
            "nucleus_area_px_median": round(median_px0, 1) if median_px0 is not None else None,
            "stain_estimate": StainEstimate.from_json(plan.extras["stain"]).method,
        })
        density = [self._density(r, plan) for r in rows]
        grid = self.tile_grid(plan, [np.nan if v is None else v for v in density])
        finite = grid[np.isfinite(grid)]
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        unit = "nuclei per mm² of section" if plan.mpp else "nuclei per million section pixels"
        return Outcome(
            metrics,
            images={"density": render_heatmap(grid, vmin=0.0, vmax=max(vmax, 1e-9), cmap="magma")},
            legends={"density": {"kind": "scale", "label": unit,
                                 "stops": legend_stops(0.0, max(vmax, 1e-9), "magma")}},
        )

    @staticmethod
    def _density(row: dict, plan) -> float | None:
        """Nuclei per mm² of section in the tile (per million px without a pixel size)."""
        section_px0 = row["section_px"] * plan.analysis_downsample ** 2
        if not section_px0:
            return None
        unit = plan.mpp ** 2 / 1e6 if plan.mpp else 1e-6
        return row["nuclei"] / (section_px0 * unit)

    def tile_columns(self, row: dict, plan) -> dict:
        value = self._density(row, plan)
        name = "nuclei_per_mm2" if plan.mpp else "nuclei_per_mpx"
        return {name: round(value, 3) if value is not None else None}
