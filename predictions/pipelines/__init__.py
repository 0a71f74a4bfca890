"""The registry of built-in pipelines. A pipeline is found by name and version."""

from .base import ModelSpec, Outcome, Param, ParamError, Pipeline, Plan, Prepared, Step
from .ihc_dab import IhcDab
from .nuclei_density import NucleiDensity
from .tissue_area import TissueArea
from .tissue_classifier import TissueClassifier

REGISTRY: dict[tuple[str, str], Pipeline] = {
    (p.name, p.version): p for p in (TissueArea(), IhcDab(), NucleiDensity(), TissueClassifier())
}


def get_pipeline(name: str, version: str) -> Pipeline:
    try:
        return REGISTRY[(name, version)]
    except KeyError:
        raise LookupError(f"No pipeline {name} version {version} is installed on this server.") from None


__all__ = ["REGISTRY", "get_pipeline", "ModelSpec", "Outcome", "Param", "ParamError", "Pipeline",
           "Plan", "Prepared", "Step"]
