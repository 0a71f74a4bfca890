"""tissue-classifier: a registered TorchScript tile classifier, run in batches on the gpu queue."""

import numpy as np

from predictions.imaging.heatmap import render_classes

from .base import BasePipeline, Figure, ModelSpec, Outcome, Prepared, TileClasses, TileValue

# Class colours for the heatmap, in the order of the model's class names (cycled if more).
PALETTE = [(200, 200, 200), (230, 120, 170), (90, 60, 170), (240, 170, 40), (40, 150, 200), (60, 170, 90)]


class TissueClassifier(BasePipeline):
    name = "tissue-classifier"
    version = "1.1"
    title = "Tissue classifier (model)"
    description = ("Classifies tissue tiles with a registered TorchScript model on the gpu queue "
                   "(CUDA when the worker has a GPU, else the CPU) and reports the area fraction "
                   "of tissue in each class, with a class map.")
    batch_queue = "gpu"
    batch_produces = "class probabilities per tile"
    aggregate_produces = "area fraction per class, class map"
    model_name = "tissue-classifier-demo"
    params = (BasePipeline.MIN_TISSUE,)
    figures = (
        *BasePipeline.AREA_FIGURES,
        BasePipeline.TILES_ANALYSED,
        Figure("class_fraction_", "{} fraction", description="Share of the tissue (by tile tissue fraction) "
               "in tiles of that class.", prefix=True),
    )
    tile_value = TileValue("class", "predicted class")
    BATCH_SIZE = 64
    INFERENCE_BATCH = 32

    def analysis_resolution(self, params, model: ModelSpec | None):
        if model is None:
            raise ValueError("tissue-classifier needs a registered model")
        return model.mpp, model.tile_size

    def process_tiles(self, reader, prepared, indices, params, model: ModelSpec | None = None):
        plan = prepared.plan
        from predictions.imaging.inference import (
            PrefetchingTileLoader,
            classify,
            reading_threads,
            to_batch_tensor,
        )

        net, device = loaded_model(model)
        loader = PrefetchingTileLoader(lambda i: self.read_tile(reader, plan, i), list(indices),
                                       self.INFERENCE_BATCH, workers=reading_threads(device))
        rows = []
        for _, tiles in loader:
            probs = classify(net, to_batch_tensor(tiles, model.mean, model.std, device), device)
            for p in probs:
                rows.append({"class": model.class_names[int(p.argmax())],
                             **{f"p_{name}": round(float(v), 5) for name, v in zip(model.class_names, p)}})
        return rows

    def aggregate(self, prepared: Prepared, rows, params, model: ModelSpec | None = None,
                  detections=None) -> Outcome:
        plan = prepared.plan
        names = list(model.class_names)
        weights = np.asarray(plan.tile_tissue, dtype=float)
        labels = [r["class"] for r in rows]
        total = float(weights.sum())
        metrics = self.area_metrics(plan, total * plan.tile_size_level0 ** 2)
        metrics["tiles_analysed"] = len(rows)
        for name in names:
            share = sum(w for w, lab in zip(weights, labels) if lab == name)
            metrics[f"class_fraction_{name}"] = round(share / total, 6) if total else 0.0
        grid = np.full(plan.grid_shape, -1, dtype=np.int32)
        for (r, c), lab in zip(plan.tiles, labels):
            grid[r, c] = names.index(lab)
        colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
        return Outcome(
            metrics,
            images={"classes": render_classes(grid, colours)},
            legends={"classes": {"kind": "classes", "label": "predicted class",
                                 "classes": [(n, "#%02x%02x%02x" % c) for n, c in zip(names, colours)]}},
        )


    def tile_classes(self, records, options, class_names=()):
        names = list(class_names) or sorted({rec["class"] for rec in records})
        classes = {name: (name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(names)}
        per_tile = [classes.get(rec.get("class")) or (str(rec.get("class")), (128, 128, 128)) for rec in records]
        return TileClasses(per_tile, regions=tuple(classes.values()))


_MODEL_CACHE: dict[str, tuple] = {}


def loaded_model(spec: ModelSpec):
    """The model on this worker's device, loaded once per process (keyed by file checksum)."""
    from predictions.imaging.inference import load_torchscript, pick_device, use_one_cpu_thread_on_gpu

    if spec.sha256 not in _MODEL_CACHE:
        device = pick_device()
        use_one_cpu_thread_on_gpu(device)
        _MODEL_CACHE.clear()  # one model resident at a time: GPU memory is the scarce thing
        _MODEL_CACHE[spec.sha256] = (load_torchscript(spec.path, device), device)
    return _MODEL_CACHE[spec.sha256]
