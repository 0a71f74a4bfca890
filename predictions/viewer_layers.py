"""A slide's finished predictions in the slide viewer: the runs to choose from and the images,
tile grid and detections of the one shown.

Registered with the viewer from PredictionsConfig.ready() (experiments/viewer_layers.py says
why the viewer asks rather than imports). Only predictions of the user's labs are offered.
"""

from django.urls import reverse

from experiments.viewer_layers import ViewerLayers

from .models import Prediction, SlideRun, Status


def finished_runs(request, slide) -> ViewerLayers:
    """The slide's finished runs, newest first; the one asked for (?run=<pk>) or the newest shown."""
    runs = list(SlideRun.objects.filter(slide=slide, status=Status.SUCCEEDED,
                                        prediction__in=Prediction.objects.for_user(request.user))
                .select_related("prediction__pipeline").order_by("-prediction__created_at", "-pk"))
    wanted = request.GET.get("run")
    run = next((r for r in runs if str(r.pk) == wanted), runs[0] if runs else None)
    if run is None:
        return ViewerLayers("predictions/_viewer_panel.html", extra={"runs": [], "run": None})
    layers = [{"name": name, "label": (image.get("legend") or {}).get("label") or name,
               "legend": image.get("legend") or {},
               "url": reverse("predictions:run_file", args=[run.pk, f"{name}.png"])}
              for name, image in (run.images or {}).items()]
    try:
        tiled = run.prediction.pipeline.code.is_tiled
    except LookupError:  # the pipeline's code is no longer installed
        tiled = False
    return ViewerLayers(
        "predictions/_viewer_panel.html", layers=layers, tiled=tiled,
        data_url=reverse("predictions:run_overlay", args=[run.pk]),
        crumb=(f"prediction #{run.prediction_id}", reverse("predictions:detail", args=[run.prediction_id])),
        extra={"runs": runs, "run": run},
    )
