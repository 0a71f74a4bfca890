"""The pipeline contract: what a pipeline declares and the three steps every one of them runs.

A pipeline is plain Python: no Django, no Celery. The engine (predictions/engine.py and the
tasks) runs its steps on the queues they declare:

1. prepare (cpu): open the slide, detect tissue on a low-resolution image, lay out the grid of
   tissue tiles to analyse, and estimate what the pipeline needs per slide (e.g. its stain
   vectors, kept in Plan.extras). Returns a Plan (JSON-serialisable) and the tissue mask.
2. process_tiles (the pipeline's `batch_queue`): one batch of tiles at a time, a few seconds to a
   few minutes of work, returning one row of numbers per tile. Must be deterministic: a batch
   delivered twice must give the same rows. A row may carry per-object detections under
   "_detections" (float32 N x 3: x, y in level-0 px, area in level-0 px²); the engine stores them
   per slide and hands them to aggregate. Other keys starting with "_" stay out of the tables.
3. aggregate (cpu): turns every tile row into the slide's metrics and result images.

Figures are in physical units (µm, µm², OD) and their names are stable snake_case with the unit
in the name (see README, "Figures"). Tissue sizes are µm² (level-0 px² when a slide has no pixel
size). A tile is read the same way whatever the tiling: past the slide's edge is glass (white).

Beyond the steps, a pipeline declares everything the platform shows of it, so that the engine,
pages, API, CSV, viewer and GeoJSON never need to know a pipeline by name:

- who it is: name, version (PEP 440, compared as versions), title, description (the method);
- its parameters (Param: default, bounds, help) and the steps with their queues;
- its figures (Figure: name, label, unit, description) and its per-tile table columns
  (tile_columns), with the one tile value the viewer shows first and the page plots (tile_value);
- its overlays: the images aggregate returns, each with its legend (Outcome);
- what QuPath gets (GeoJSON): the tissue regions (exports_tissue_regions), a class per tile and
  the classes whose tiles merge into region annotations (tile_classes, with export_options such
  as a cut-off the user may change at download), and the class of its per-object detections
  (detection_class);
- the registered model family it needs, if any (model_name).

Rules every step keeps:

- No Django and no Celery: a step gets a SlideReader, plain values and numpy arrays, and returns
  plain values; the platform stores them (the plan and tile rows as JSON).
- Idempotent: a step may run twice (a worker lost mid-task, a redelivered message); a batch
  delivered twice returns the same rows, which replace the first ones. Nothing is written
  anywhere by a step.
- Bounded memory: a batch holds a few tiles at a time, never the slide at full resolution;
  prepare works on a low-resolution image (MASK_MAX_PIXELS) and bounded samples.

runner.run_slide runs all steps in one process, as the queues would: the way to test a pipeline.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from packaging.version import InvalidVersion, Version
from PIL import Image

from experiments.slide_files import SlideReader
from predictions.imaging.stain import StainEstimate, estimate_stains, estimate_white
from predictions.imaging.tissue import tissue_mask

Queue = Literal["cpu", "gpu"]


class ParamError(ValueError):
    """A parameter value the user must correct; str() names the parameter and the bounds."""


@dataclass(frozen=True)
class Param:
    name: str
    type: Literal["int", "float", "bool", "choice"]
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    label: str = ""

    def parse(self, raw: Any) -> Any:
        """The typed value, or ParamError with a sentence for the user."""
        label = self.label or self.name
        if raw is None or raw == "":
            return self.default
        try:
            if self.type == "bool":
                if isinstance(raw, bool):
                    value = raw
                elif str(raw).lower() in ("1", "true", "yes", "on"):
                    value = True
                elif str(raw).lower() in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError
            elif self.type == "int":
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError
                value = int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
            elif self.type == "float":
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = str(raw)
        except (TypeError, ValueError):
            kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(self.type, "text")
            raise ParamError(f"{label} must be {kind}; got {raw!r}.") from None
        if self.type == "choice" and value not in self.choices:
            raise ParamError(f"{label} must be one of {', '.join(self.choices)}; got {value!r}.")
        if self.min is not None and value < self.min:
            raise ParamError(f"{label} must be at least {self.min:g}; got {value:g}.")
        if self.max is not None and value > self.max:
            raise ParamError(f"{label} must be at most {self.max:g}; got {value:g}.")
        return value

    def schema(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, (), "")} | {"default": self.default}


@dataclass(frozen=True)
class Figure:
    """A slide figure a pipeline reports: its stable name and how people read it.

    With prefix=True the name is a prefix (class_fraction_ + a class name) and "{}" in the label
    stands for the rest of the name, in words.
    """

    name: str
    label: str
    unit: str = ""            # "mm²", "OD", "µm²"; "" for counts, fractions and flags
    description: str = ""
    prefix: bool = False

    def matches(self, name: str) -> bool:
        return name.startswith(self.name) if self.prefix else name == self.name

    @property
    def shown_label(self) -> str:
        """The label as a list of figures shows it ("<class> fraction" for a prefix)."""
        return self.label.format("<class>") if self.prefix else self.label

    def as_dict(self) -> dict:
        return {"name": self.name, "label": self.shown_label, "unit": self.unit,
                "description": self.description, "prefix": self.prefix}

    def label_for(self, name: str) -> str:
        if self.prefix:
            return self.label.format(name.removeprefix(self.name).replace("_", " ")).capitalize()
        return self.label


@dataclass(frozen=True)
class TileValue:
    """The per-tile value shown first: in the viewer's tile panel, and (plot_title) as a
    distribution on the prediction page when it is a number."""

    column: str               # a column of the tile table (a row key or a tile_columns key)
    label: str
    plot_title: str = ""      # "" = not plotted


# A QuPath classification: its name and colour.
PathClass = tuple[str, tuple[int, int, int]]
# QuPath's own colours for its built-in Positive / Negative classes.
POSITIVE: PathClass = ("Positive", (200, 50, 50))
NEGATIVE: PathClass = ("Negative", (112, 112, 225))


@dataclass
class TileClasses:
    """How a run's tiles appear in QuPath: a class for each tile (None: unclassified), and the
    classes whose tiles are merged into one region annotation each."""

    per_tile: list[PathClass | None]
    regions: tuple[PathClass, ...] = ()
    region_name: str | None = None    # the regions' name; default "<class> tiles"


@dataclass(frozen=True)
class Step:
    name: str
    queue: Queue
    produces: str


@dataclass
class Plan:
    """Where the tiles are. Level-0 coordinates; JSON-serialisable (stored with the slide run)."""

    mpp: float | None                 # µm per level-0 pixel, None when the slide has none
    analysis_downsample: float        # level-0 pixels per analysed pixel
    tile_size: int                    # tile side in analysed pixels
    mask_downsample: float            # level-0 pixels per tissue-mask pixel
    mask_shape: tuple[int, int]
    grid_shape: tuple[int, int]       # rows, cols of the whole tile grid over the slide
    tiles: list[tuple[int, int]] = field(default_factory=list)   # (row, col) of tissue tiles
    tile_tissue: list[float] = field(default_factory=list)       # tissue fraction of each tile
    batch_size: int = 16
    # What the pipeline estimated for this slide in prepare (stain vectors, ...), JSON.
    extras: dict = field(default_factory=dict)

    @property
    def analysis_mpp(self) -> float | None:
        return self.mpp * self.analysis_downsample if self.mpp else None

    @property
    def tile_size_level0(self) -> int:
        return round(self.tile_size * self.analysis_downsample)

    def batches(self) -> list[range]:
        return [range(i, min(i + self.batch_size, len(self.tiles))) for i in range(0, len(self.tiles), self.batch_size)]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        data = dict(data)
        data["tiles"] = [tuple(t) for t in data["tiles"]]
        data["mask_shape"], data["grid_shape"] = tuple(data["mask_shape"]), tuple(data["grid_shape"])
        data.setdefault("extras", {})
        return cls(**data)


@dataclass
class Prepared:
    """A prepared slide. The tile step reads it and must not change it: a worker hands the same
    one to every batch of the slide (its mask is read-only there)."""

    plan: Plan
    mask: np.ndarray   # bool, the tissue mask at mask_downsample


@dataclass
class Outcome:
    """What a slide's aggregate step returns: its figures and images to keep."""

    metrics: dict[str, float | int | bool | None]
    images: dict[str, Image.Image] = field(default_factory=dict)
    legends: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A registered TorchScript model, as the gpu step needs it (no database row)."""

    path: str
    sha256: str
    tile_size: int
    mpp: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]


class BasePipeline(ABC):
    """The contract between a pipeline and the platform (see the module docstring)."""

    name: ClassVar[str]               # lower-case words joined by "-", e.g. "ihc-dab"
    version: ClassVar[str]            # PEP 440, e.g. "2.0": a new version for any change of figures
    title: ClassVar[str]
    description: ClassVar[str]        # the method, as a methods section would state it
    batch_queue: ClassVar[Queue] = "cpu"
    batch_produces: ClassVar[str] = "per-tile figures"
    aggregate_produces: ClassVar[str] = "slide figures"
    params: ClassVar[tuple[Param, ...]] = ()
    # The registered model family this pipeline runs (model pipelines only).
    model_name: ClassVar[str | None] = None
    # Every slide figure aggregate may report (names, labels, units).
    figures: ClassVar[tuple[Figure, ...]] = ()
    tile_value: ClassVar[TileValue | None] = None
    # GeoJSON for QuPath: the tissue mask as "Tissue" annotations; per-object detections' class;
    # options of the export the user may set at download (query parameters), for tile_classes.
    exports_tissue_regions: ClassVar[bool] = False
    detection_class: ClassVar[PathClass] = ("Detection", (60, 110, 230))
    export_options: ClassVar[tuple[Param, ...]] = ()

    # Figures most pipelines report (see area_metrics).
    AREA_FIGURES = (
        Figure("tissue_area_mm2", "Tissue area (mm²)", "mm²", "Area of the tissue analysed."),
        Figure("tissue_area_px", "Tissue area (px)", "px", "The same in level-0 pixels."),
        Figure("mpp_missing", "No pixel size", description="The slide has no pixel size: no figure in µm or mm²."),
    )
    TILES_ANALYSED = Figure("tiles_analysed", "Tiles analysed")
    STAIN_ESTIMATE = Figure("stain_estimate", "Stain vectors",
                            description="How the stain vectors were found: estimated on this slide, or the reference ones.")

    NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

    @classmethod
    def contract_problem(cls, pipeline) -> str | None:
        """Why `pipeline` cannot be run by the platform, or None (checked when it is loaded)."""
        if not isinstance(pipeline, BasePipeline):
            return f"{pipeline!r} is not a BasePipeline"
        for attribute in ("name", "version", "title", "description"):
            if not isinstance(getattr(pipeline, attribute, None), str) or not getattr(pipeline, attribute):
                return f"{type(pipeline).__name__} has no {attribute}"
        if not cls.NAME_PATTERN.match(pipeline.name) or len(pipeline.name) > 100:
            return f"pipeline name {pipeline.name!r} must be lower-case words joined by '-'"
        try:
            Version(pipeline.version)
        except InvalidVersion:
            return f"{pipeline.name}: version {pipeline.version!r} is not a version number (PEP 440)"
        if pipeline.batch_queue not in ("cpu", "gpu"):
            return f"{pipeline.name}: batch_queue must be 'cpu' or 'gpu'"
        if not all(isinstance(p, Param) for p in (*pipeline.params, *pipeline.export_options)):
            return f"{pipeline.name}: params and export_options must be Param"
        if not all(isinstance(f, Figure) for f in pipeline.figures):
            return f"{pipeline.name}: figures must be Figure"
        return None

    def figure(self, name: str) -> Figure | None:
        """The declared figure of that name (or prefix), or None."""
        return next((f for f in self.figures if f.matches(name)), None)

    # Shared parameters of tiled pipelines.
    MIN_TISSUE = Param("min_tissue", "float", 0.25, "Tiles with less tissue than this fraction are skipped.",
                       min=0.0, max=1.0, label="Minimum tissue per tile")
    TILE_SIZE = Param("tile_size", "int", 512, "Tile side in pixels at the analysis resolution.",
                      min=64, max=2048, label="Tile size (px)")
    MPP = Param("analysis_mpp", "float", 0.5, "Resolution the tiles are analysed at (µm per pixel). "
                "Ignored for slides without a pixel size: they are analysed at full resolution.",
                min=0.1, max=16.0, label="Analysis resolution (µm/px)")

    # Tissue detection runs on an image of about this many µm per pixel (or this downsample),
    # never larger than MASK_MAX_PIXELS.
    MASK_MPP = 4.0
    MASK_DOWNSAMPLE_NO_MPP = 8.0
    MASK_MAX_PIXELS = 16_000_000
    # Tissue pieces smaller than this are dropped and holes smaller than this are filled. A
    # piece of 250 µm² is a handful of cells: small real fragments stay, specks of stain go.
    MIN_TISSUE_UM2 = 250.0
    MIN_HOLE_UM2 = 500.0
    # The same in level-0 pixels, for slides without a pixel size (as if 0.5 µm/px).
    MIN_TISSUE_PX0 = 1_000
    MIN_HOLE_PX0 = 2_000
    # Tiles per batch task. A batch is sized by pixels (about BATCH_PIXELS, a few seconds of
    # work), so that large slides are not cut into hundreds of sub-second tasks whose fixed cost
    # (a message, a claim, the slide opened, a row written) would add up; but a slide keeps at
    # least MIN_BATCHES batches when it has the tiles for them, so progress still moves in small
    # steps, and a batch never has fewer than BATCH_SIZE tiles. The platform may ask for more
    # tiles per batch than progress needs (batch_size's at_least: see engine.prepare).
    BATCH_SIZE = 16
    BATCH_PIXELS = 2**24
    MIN_BATCHES = 20

    @property
    def steps(self) -> tuple[Step, ...]:
        steps = [Step("prepare", "cpu", "tissue mask and tile grid")]
        if self.is_tiled:
            steps.append(Step("tiles", self.batch_queue, self.batch_produces))
        steps.append(Step("aggregate", "cpu", self.aggregate_produces))
        return tuple(steps)

    @property
    def is_tiled(self) -> bool:
        return True

    def parse_params(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        """Typed, bounded parameters with defaults filled in; ParamError lists what is wrong."""
        raw = dict(raw or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParamError(f"Unknown parameter(s) for {self.name}: {', '.join(unknown)}.")
        return {p.name: p.parse(raw.get(p.name)) for p in self.params}

    # -- step 1 -------------------------------------------------------------------------------
    def prepare(self, reader: SlideReader, params: dict, model: ModelSpec | None = None,
                stain: str = "") -> Prepared:
        """The tissue mask and the tile plan; `stain` is the declared stain ("" = not declared)."""
        mpp = reader.info.mpp
        mask_ds = max(1.0, self.MASK_MPP / mpp) if mpp else self.MASK_DOWNSAMPLE_NO_MPP
        mask_ds = max(mask_ds, math.sqrt(reader.info.width * reader.info.height / self.MASK_MAX_PIXELS))
        low, mask_ds = reader.read_downsampled(mask_ds)
        mask = self.detect_tissue(low, mpp, mask_ds)
        if not self.is_tiled:
            plan = Plan(mpp, 1.0, 0, mask_ds, mask.shape, (0, 0), batch_size=self.BATCH_SIZE)
            prepared = Prepared(plan, mask)
        else:
            prepared = Prepared(self.tile_plan(reader, mask, mask_ds, params, model), mask)
        self.estimate(reader, prepared, low, params, stain)
        return prepared

    def detect_tissue(self, low, mpp: float | None, mask_ds: float):
        """The slide's tissue mask from its low-resolution image (sizes from µm² or level-0 px)."""
        px0 = mask_ds ** 2
        min_object = self.MIN_TISSUE_UM2 / (mpp ** 2 * px0) if mpp else self.MIN_TISSUE_PX0 / px0
        min_hole = self.MIN_HOLE_UM2 / (mpp ** 2 * px0) if mpp else self.MIN_HOLE_PX0 / px0
        return tissue_mask(low, min_object_px=max(1, math.ceil(min_object)), min_hole_px=max(1, math.ceil(min_hole)))

    def tile_plan(self, reader: SlideReader, mask, mask_ds: float, params: dict, model: ModelSpec | None) -> Plan:
        mpp = reader.info.mpp
        analysis_mpp, tile_size = self.analysis_resolution(params, model)
        analysis_ds = max(analysis_mpp / mpp, 1.0) if mpp else 1.0
        # Analyse at a pyramid level's own scale when it is within 10 % of the wanted one: no
        # resampling, and tiles of any size read exactly the same pixels.
        for level_ds in reader.level_downsamples:
            if abs(analysis_ds / level_ds - 1) < 0.1:
                analysis_ds = float(level_ds)
                break
        tile0 = tile_size * analysis_ds
        rows = math.ceil(reader.info.height / tile0)
        cols = math.ceil(reader.info.width / tile0)
        # Tissue fraction of each tile, read off the low-resolution mask (every mask pixel the
        # tile touches, so a tile with any tissue is found whatever the tiling).
        scale = tile0 / mask_ds
        tiles, fractions = [], []
        min_tissue = params.get("min_tissue", self.MIN_TISSUE.default)
        for r in range(rows):
            for c in range(cols):
                window = mask[int(r * scale): max(math.ceil((r + 1) * scale), int(r * scale) + 1),
                              int(c * scale): max(math.ceil((c + 1) * scale), int(c * scale) + 1)]
                fraction = float(window.mean()) if window.size else 0.0
                if fraction >= min_tissue and fraction > 0:
                    tiles.append((r, c))
                    fractions.append(round(fraction, 4))
        return Plan(mpp, analysis_ds, tile_size, mask_ds, mask.shape, (rows, cols), tiles, fractions,
                    batch_size=self.batch_size(len(tiles), tile_size))

    def estimate(self, reader: SlideReader, prepared: Prepared, low, params: dict, stain: str) -> None:
        """Per-slide estimates a pipeline needs (e.g. stain vectors) into prepared.plan.extras."""

    # Windows sampled across the tissue for the stain estimate: bounded work, spread over the
    # slide, and placed by the tissue mask alone (not by the tile grid), so the estimate and
    # every figure scaled by it do not depend on the tile size.
    STAIN_SAMPLE_WINDOWS = 12
    STAIN_SAMPLE_SIDE = 512     # pixels at the analysis resolution

    def slide_stains(self, reader: SlideReader, prepared: Prepared, low) -> StainEstimate:
        """The slide's glass white and stain vectors, from tissue windows spread over the slide."""
        plan, mask = prepared.plan, prepared.mask
        white = estimate_white(low, mask)
        tissue = np.flatnonzero(mask)
        if tissue.size == 0:
            return StainEstimate.reference(white=white, note="No tissue: reference vectors used.")
        count = min(self.STAIN_SAMPLE_WINDOWS, tissue.size)
        picks = tissue[np.linspace(0, tissue.size - 1, count).round().astype(int)]
        ds = plan.analysis_downsample
        level = reader.best_level_for_downsample(ds)
        level_ds = reader.level_downsamples[level]
        side0 = self.STAIN_SAMPLE_SIDE * ds
        pixels = []
        for index in picks:
            r, c = divmod(int(index), mask.shape[1])
            x0 = round((c + 0.5) * plan.mask_downsample - side0 / 2)
            y0 = round((r + 0.5) * plan.mask_downsample - side0 / 2)
            size = max(1, round(side0 / level_ds))
            window = reader.read_region((x0, y0), level, (size, size))
            ys = ((y0 + (np.arange(size) + 0.5) * level_ds) / plan.mask_downsample).astype(int)
            xs = ((x0 + (np.arange(size) + 0.5) * level_ds) / plan.mask_downsample).astype(int)
            inside = (ys[:, None] >= 0) & (ys[:, None] < mask.shape[0]) & (xs[None, :] >= 0) & (xs[None, :] < mask.shape[1])
            on_tissue = inside & mask[np.clip(ys, 0, mask.shape[0] - 1)[:, None], np.clip(xs, 0, mask.shape[1] - 1)[None, :]]
            pixels.append(window[on_tissue])
        return estimate_stains(np.concatenate(pixels), white)

    def check_stain(self, stain: str) -> str | None:
        """Why this pipeline refuses slides declared with this stain (None: it takes them)."""
        return None

    def batch_size(self, tiles: int, tile_size: int, at_least: int = 0) -> int:
        """Tiles per batch for a slide with this many tiles of this side (see BATCH_PIXELS);
        at_least: no fewer than this, up to BATCH_PIXELS' worth."""
        by_pixels = max(1, self.BATCH_PIXELS // (tile_size * tile_size))
        for_progress = max(self.BATCH_SIZE, math.ceil(tiles / self.MIN_BATCHES), at_least)
        return max(self.BATCH_SIZE, min(by_pixels, for_progress))

    def analysis_resolution(self, params: dict, model: ModelSpec | None) -> tuple[float, int]:
        return params.get("analysis_mpp", self.MPP.default), params.get("tile_size", self.TILE_SIZE.default)

    # -- step 2 -------------------------------------------------------------------------------
    def read_tile(self, reader: SlideReader, plan: Plan, index: int, margin: int = 0) -> np.ndarray:
        """One tile at the analysis resolution, with `margin` pixels of its surroundings on each
        side ((tile_size + 2 margin)² RGB; white, i.e. glass, past the slide's edge)."""
        row, col = plan.tiles[index]
        size0 = plan.tile_size_level0
        margin0 = round(margin * plan.analysis_downsample)
        level = reader.best_level_for_downsample(plan.analysis_downsample)
        level_ds = reader.level_downsamples[level]
        side = plan.tile_size + 2 * margin
        size_level = max(1, round((size0 + 2 * margin0) / level_ds))
        region = reader.read_region((col * size0 - margin0, row * size0 - margin0), level, (size_level, size_level))
        if size_level != side:
            region = np.asarray(Image.fromarray(region).resize((side, side), Image.Resampling.BOX))
        return region

    @staticmethod
    def tile_mask(plan: Plan, mask: np.ndarray, index: int, margin: int = 0) -> np.ndarray:
        """The slide's mask over one tile and its margin, at the analysis resolution (nearest)."""
        row, col = plan.tiles[index]
        side = plan.tile_size + 2 * margin
        start = np.arange(side) - margin + 0.5
        ys = ((row * plan.tile_size + start) * plan.analysis_downsample / plan.mask_downsample).astype(int)
        xs = ((col * plan.tile_size + start) * plan.analysis_downsample / plan.mask_downsample).astype(int)
        inside_y = (ys >= 0) & (ys < mask.shape[0])
        inside_x = (xs >= 0) & (xs < mask.shape[1])
        out = mask[np.clip(ys, 0, mask.shape[0] - 1)[:, None], np.clip(xs, 0, mask.shape[1] - 1)[None, :]]
        return out & inside_y[:, None] & inside_x[None, :]

    def process_tiles(self, reader: SlideReader, prepared: Prepared, indices: range, params: dict,
                      model: ModelSpec | None = None) -> list[dict]:
        raise NotImplementedError(f"{self.name} has no tile step")

    def tile_columns(self, row: dict, plan: Plan) -> dict:
        """Derived per-tile columns for the tile table (CSV) and the viewer, beyond the raw row."""
        return {}

    def tile_records(self, plan: Plan, rows: list[dict]) -> list[dict[str, Any]]:
        """The tile table: one dict per analysed tile, in tile order.

        tile, row, col, x, y, size_px (level-0 px), tissue_fraction, the pipeline's own row (less
        its private "_" keys) and its tile_columns(). The CSV, the viewer and the GeoJSON read it.
        """
        size0 = plan.tile_size_level0
        records = []
        for i, ((r, c), tissue, row) in enumerate(zip(plan.tiles, plan.tile_tissue, rows)):
            own = {k: v for k, v in row.items() if not k.startswith("_")}
            records.append({"tile": i, "row": r, "col": c, "x": c * size0, "y": r * size0, "size_px": size0,
                            "tissue_fraction": tissue, **own, **self.tile_columns(row, plan)})
        return records

    def parse_export_options(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The export options from a request's query (unknown keys ignored); ParamError if bad."""
        return {p.name: p.parse(raw.get(p.name)) for p in self.export_options}

    def tile_classes(self, records: list[dict], options: dict, class_names: tuple[str, ...] = ()) -> TileClasses | None:
        """QuPath classes of the tiles (records: tile_records), or None: tiles unclassified."""
        return None

    # -- step 3 -------------------------------------------------------------------------------
    @abstractmethod
    def aggregate(self, prepared: Prepared, rows: list[dict], params: dict,
                  model: ModelSpec | None = None, detections: np.ndarray | None = None) -> Outcome:
        """Slide figures from every tile row (in tile order), the tissue mask and the slide's
        detections (the rows' "_detections" put together, None when the pipeline has none)."""

    # -- helpers for aggregate ----------------------------------------------------------------
    @staticmethod
    def tile_grid(plan: Plan, values: list[float]) -> np.ndarray:
        """Per-tile values laid out on the slide's tile grid; NaN where no tile was analysed."""
        grid = np.full(plan.grid_shape, np.nan, dtype=np.float32)
        for (r, c), v in zip(plan.tiles, values):
            grid[r, c] = v
        return grid

    @staticmethod
    def fit_to_slide(image: Image.Image, plan: Plan, width: int, height: int, max_side: int = 1024) -> Image.Image:
        """A one-pixel-per-tile image scaled onto the slide's own extent, for overlays.

        The tile grid runs past the right and bottom edges of the slide (partial tiles); scaling
        it whole would stretch it over the thumbnail. Each cell becomes a square block, then the
        part beyond the slide is cropped, so overlay and thumbnail line up.
        """
        scale = max_side / max(width, height)
        block = max(1, round(plan.tile_size_level0 * scale))
        rows, cols = plan.grid_shape
        big = image.resize((cols * block, rows * block), Image.Resampling.NEAREST)
        target = (max(1, round(width * block / plan.tile_size_level0)), max(1, round(height * block / plan.tile_size_level0)))
        return big.crop((0, 0, *target))

    @staticmethod
    def mask_area_px0(plan: Plan, mask: np.ndarray) -> float:
        """Level-0 pixels covered by a mask at the plan's mask resolution."""
        return float(np.count_nonzero(mask)) * plan.mask_downsample ** 2

    @staticmethod
    def area_metrics(plan: Plan, tissue_px_level0: float) -> dict:
        """Tissue area of what was analysed, in mm² when the slide has a pixel size."""
        metrics: dict = {"mpp_missing": plan.mpp is None, "tissue_area_px": int(round(tissue_px_level0))}
        metrics["tissue_area_mm2"] = (
            round(tissue_px_level0 * plan.mpp ** 2 / 1e6, 6) if plan.mpp is not None else None
        )
        return metrics
