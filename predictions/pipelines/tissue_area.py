"""tissue-area: how much tissue is on the slide, from a low-resolution tissue mask."""

from predictions.imaging.heatmap import render_mask
from predictions.imaging.tissue import tissue_fraction

from .base import Outcome, Pipeline, Prepared


class TissueArea(Pipeline):
    name = "tissue-area"
    version = "1.0"
    title = "Tissue area"
    description = ("Detects tissue on a low-resolution image of the slide (Otsu threshold on colour "
                   "saturation, then morphological clean-up) and reports its area in mm², or in "
                   "pixels when the slide has no pixel size.")
    aggregate_produces = "tissue area, tissue fraction, tissue mask image"

    @property
    def is_tiled(self) -> bool:
        return False

    def aggregate(self, prepared: Prepared, rows, params, model=None) -> Outcome:
        plan, mask = prepared.plan, prepared.mask
        metrics = self.area_metrics(plan, float(mask.sum()) * plan.mask_downsample ** 2)
        metrics["tissue_fraction"] = round(tissue_fraction(mask), 6)
        return Outcome(metrics, images={"tissue_mask": render_mask(mask)},
                       legends={"tissue_mask": {"kind": "mask", "label": "tissue", "colour": "#00a050"}})
