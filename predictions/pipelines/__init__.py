"""The pipelines installed on this server, found by name and version.

Every pipeline, the four built-in ones included, is a BasePipeline subclass that its Python
package registers under the `histoia.pipelines` entry-point group (pyproject.toml here;
docs/pipelines.md for a lab's own package). Installing a package is all it takes to add one:
`migrate` then gives it a Pipeline row (predictions/catalogue.py), and the queues, pages, API,
exports and viewer take it from there.

A package that is registered but cannot be loaded (an import error, a class that breaks the
contract, two packages claiming the same name and version) is listed by unavailable() with the
reason, and every other pipeline keeps working.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from .base import BasePipeline, Figure, ModelSpec, Outcome, Param, ParamError, Plan, Prepared, Step, TileClasses

ENTRY_POINT_GROUP = "histoia.pipelines"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unavailable:
    """A registered pipeline that could not be loaded, and why (shown in the admin and the list)."""

    entry_point: str   # the name it is registered under, e.g. "ihc-dab"
    package: str       # the distribution that registers it
    error: str


@cache
def _load() -> tuple[dict[tuple[str, str], BasePipeline], tuple[Unavailable, ...]]:
    found: dict[tuple[str, str], BasePipeline] = {}
    broken: list[Unavailable] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        package = ep.dist.name if ep.dist else ""
        try:
            loaded = ep.load()
            pipeline = loaded() if isinstance(loaded, type) else loaded
            problem = BasePipeline.contract_problem(pipeline)
            if problem is None and (pipeline.name, pipeline.version) in found:
                problem = f"{pipeline.name} {pipeline.version} is already registered by another package"
            if problem:
                raise TypeError(problem)
        except Exception as exc:  # noqa: BLE001 - any failure of a plug-in is reported, never raised
            log.error("pipeline %r from %s is unavailable: %s", ep.name, package, exc, exc_info=True)
            broken.append(Unavailable(ep.name, package, f"{type(exc).__name__}: {exc}"))
            continue
        found[(pipeline.name, pipeline.version)] = pipeline
    if not found and not broken:
        log.error("No pipeline is registered: install Histo-IA into its environment (make install, "
                  "or `pip install -e .`), so that its built-in pipelines' entry points exist.")
    return found, tuple(broken)


def installed() -> dict[tuple[str, str], BasePipeline]:
    """Every loadable pipeline, by (name, version)."""
    return _load()[0]


def unavailable() -> tuple[Unavailable, ...]:
    return _load()[1]


def reload() -> None:
    """Look for entry points again (after a package was installed or removed in this process)."""
    _load.cache_clear()


def get_pipeline(name: str, version: str) -> BasePipeline:
    try:
        return installed()[(name, version)]
    except KeyError:
        raise LookupError(f"No pipeline {name} version {version} is installed on this server.") from None


__all__ = ["ENTRY_POINT_GROUP", "BasePipeline", "Figure", "ModelSpec", "Outcome", "Param", "ParamError",
           "Plan", "Prepared", "Step", "TileClasses", "Unavailable", "get_pipeline", "installed", "reload",
           "unavailable"]
