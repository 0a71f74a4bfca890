"""Keeping database rows in step with the code: pipeline versions and the shipped demo model."""

import json
from pathlib import Path

from django.core.files import File

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


def sync_pipelines(**kwargs) -> None:
    """One Pipeline row per pipeline version in the registry (runs after every migrate).

    New versions appear enabled; admins' enable flags and descriptions are never overwritten.
    A row whose code is gone stays (history points at it) but is marked not installed.
    """
    from .models import Pipeline
    from .pipelines import installed

    registry = installed()
    for (name, version), code in registry.items():
        row, created = Pipeline.objects.get_or_create(name=name, version=version, defaults={
            "title": code.title, "description": code.description})
        row.installed = True
        row.batch_queue = code.batch_queue
        row.param_schema = [p.schema() for p in code.params]
        row.steps = [{"name": s.name, "queue": s.queue, "produces": s.produces} for s in code.steps]
        row.model_name = code.model_name or ""
        row.save()
    for row in Pipeline.objects.filter(installed=True):
        if (row.name, row.version) not in registry:
            Pipeline.objects.filter(pk=row.pk).update(installed=False)


def demo_model_card(meta: dict) -> dict:
    """The demo model's card fields, from model.json (README.md's top when it has no description)."""
    return {
        "description": meta.get("description") or (DEMO_MODEL_DIR / "README.md").read_text()[:4000],
        "trained_on": meta.get("trained_on", ""),
        "label_meanings": meta.get("label_meanings", {}),
        "stain_normalisation": meta.get("stain_normalisation", ""),
        "validation": meta.get("validation", ""),
        "not_for_diagnosis": bool(meta.get("not_for_diagnosis", False)),
    }


def register_demo_model(user=None):
    """Register the shipped demo tile classifier (the version in model.json) once; returns its row.

    The version is added beside the rows of older versions, which stay for history: an install
    that registered version 1 gets version 2 as a new row, the newest of the family, so
    engine.current_model() picks it and the stale-model schedule re-runs results made with v1.
    A row already registered under the same name and version keeps its file, sha256 and enabled
    flag, but its model card is brought up to date with model.json, so existing installs say
    what the demo model is.
    """
    from .models import RegisteredModel

    meta = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
    card = demo_model_card(meta)
    existing = RegisteredModel.objects.filter(name=meta["name"], version=meta["version"]).first()
    if existing:
        changed = [name for name, value in card.items() if getattr(existing, name) != value]
        if changed:
            for name in changed:
                setattr(existing, name, card[name])
            existing.save(update_fields=changed)
        return existing
    with open(DEMO_MODEL_DIR / "tissue_classifier_demo.pt", "rb") as fh:
        model = RegisteredModel(
            name=meta["name"], version=meta["version"], tile_size=meta["tile_size"], mpp=meta["mpp"],
            mean=meta["mean"], std=meta["std"], class_names=meta["class_names"], registered_by=user, **card,
        )
        model.file.save("tissue_classifier_demo.pt", File(fh), save=False)
        model.save()
    return model
