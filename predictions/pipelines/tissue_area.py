"""tissue-area: how much tissue is on the slide, from a low-resolution tissue mask."""

from scipy import ndimage as ndi

from predictions.imaging.heatmap import render_mask
from predictions.imaging.tissue import tissue_fraction

from .base import BasePipeline, Figure, Outcome, Prepared


class TissueArea(BasePipeline):
    name = "tissue-area"
    version = "2.0"
    title = "Tissue area"
    description = ("Detects tissue on an image of the slide at about 4 µm/px: Otsu threshold on "
                   "colour saturation, so glass and grey dust are left out; marker ink (green, "
                   "blue, black: colours no stain makes) excluded; pieces smaller than 250 µm² "
                   "dropped and holes smaller than 500 µm² filled (1,000 / 2,000 level-0 px "
                   "without a pixel size), so small real fragments are kept. Reports the tissue "
                   "area in mm² (pixels when the slide has no pixel size) and the number of pieces.")
    aggregate_produces = "tissue area, tissue fraction, tissue mask image"
    figures = (
        *BasePipeline.AREA_FIGURES,
        Figure("tissue_fraction", "Tissue fraction", description="Tissue area over the slide's whole area."),
        Figure("tissue_pieces", "Tissue pieces", description="Separate pieces of tissue (8-connected)."),
    )
    exports_tissue_regions = True

    @property
    def is_tiled(self) -> bool:
        return False

    def aggregate(self, prepared: Prepared, rows, params, model=None, detections=None) -> Outcome:
        plan, mask = prepared.plan, prepared.mask
        metrics = self.area_metrics(plan, self.mask_area_px0(plan, mask))
        metrics["tissue_fraction"] = round(tissue_fraction(mask), 6)
        metrics["tissue_pieces"] = int(ndi.label(mask, structure=ndi.generate_binary_structure(2, 2))[1])
        return Outcome(metrics, images={"tissue_mask": render_mask(mask)},
                       legends={"tissue_mask": {"kind": "mask", "label": "tissue", "colour": "#00a050"}})
