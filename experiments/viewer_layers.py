"""What other apps lay over a slide in the viewer: a small registry of viewer layer providers.

The viewer page (experiments/viewer.py) belongs to experiments: the slide, its Deep Zoom
descriptor, its tiles and the lab check, all of which work with no result at all. What can be
drawn over a slide comes from the apps that analyse slides, and experiments imports none of
them: the dependencies run one way, histoia <- experiments <- predictions. So such an app
registers a provider here from its AppConfig.ready(), and the page asks it for its layers;
predictions registers the finished runs of a slide (predictions/viewer_layers.py).

A hook rather than moving the page to predictions: only the overlay panel is about results.
Moving the page would take the slide viewer, or its URL (/experiments/slides/<pk>/viewer/,
experiments:viewer, linked from the experiment page), away from the slides it shows, or split
one page across two apps.

This module imports nothing heavy: apps import it while Django starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ViewerLayers:
    """One app's layers over a slide and the panel beside the viewer that controls them."""

    # Renders the panel's content (templates/experiments/viewer.html includes it), with the
    # page's context (slide, experiment) and `overlays`, this object.
    panel_template: str
    # Images drawn over the slide, stretched to it: {"name", "label", "url", "legend"}.
    layers: list[dict] = field(default_factory=list)
    # JSON the page script reads for the layers shown (tile grid and values, tissue outline,
    # detections); None when there is none.
    data_url: str | None = None
    # Pointing at the slide reads the value of the tile under the pointer.
    tiled: bool = False
    # A breadcrumb after the experiment's, (text, url): where the layers shown come from.
    crumb: tuple[str, str] | None = None
    # Anything else the panel template needs (e.g. the results to choose from).
    extra: dict = field(default_factory=dict)


# provider(request, slide) -> ViewerLayers, or None when it has nothing to offer for this slide.
# It must show only what request.user may see (the slide itself is already checked).
LayerProvider = Callable[..., "ViewerLayers | None"]

_providers: list[LayerProvider] = []


def register(provider: LayerProvider) -> None:
    """Add a provider; registering the same one again changes nothing (ready() may run twice)."""
    if provider not in _providers:
        _providers.append(provider)


def layers_for(request, slide) -> ViewerLayers | None:
    """The layers of the first provider, in the order registered, with some for this slide."""
    for provider in _providers:
        found = provider(request, slide)
        if found is not None:
            return found
    return None
