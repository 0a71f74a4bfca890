"""Pages for running pipelines and reading their results. Every lookup is scoped to the user's
labs through .for_user(): another lab's predictions and files are 404."""

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from experiments.models import Experiment
from histoia.pagination import EitherEndPaginator

from . import engine, figures, queueing, services, task_records
from .filters import PredictionFilter
from .forms import PredictionForm
from .models import Pipeline, Prediction, SlideRun, Status
from .pipelines import Plan, unavailable


def _prediction(request, pk):
    queryset = Prediction.objects.for_user(request.user).select_related(
        "experiment__lab", "pipeline", "model", "triggered_by", "cancelled_by")
    return get_object_or_404(queryset, pk=pk)


@require_GET
def dashboard(request):
    return render(request, "predictions/dashboard.html", _dashboard_context(request))


@require_GET
def dashboard_live(request):
    """The live part of the dashboard, polled every few seconds. A bounded number of queries
    whatever the number of running predictions (runs are prefetched, workers cached)."""
    return render(request, "predictions/_dashboard.html", _dashboard_context(request))


QUEUE_SHOWN = 25
# What the dashboard shows of a running or queued prediction (templates/predictions/_dashboard.html).
DASHBOARD_COLUMNS = ("priority", "status", "done_units", "total_units", "experiment__name", "pipeline__name",
                     "pipeline__title")


def _dashboard_context(request):
    from . import monitoring

    entries = queueing.waiting(request.user, load=False, recent=True)   # built as they are read
    shown = queueing.with_predictions(entries[:entries.running + QUEUE_SHOWN], runs=True, only=DASHBOARD_COLUMNS)
    queued_shown = [e for e in shown if e["status"] == Status.QUEUED]
    running = [e for e in shown if e["status"] == Status.RUNNING]
    recent = list(Prediction.objects.for_user(request.user)
                  .filter(status__in=[Status.SUCCEEDED, Status.PARTIAL, Status.FAILED, Status.CANCELLED])
                  .select_related("experiment", "pipeline", "triggered_by").ended_latest()[:10])
    # The next ones to run; the whole queue is on the history page (status: queued) and the API.
    return {"running": running, "queued": queued_shown, "queued_more": max(0, len(entries) - entries.running - QUEUE_SHOWN),
            "recent": recent, "workers": monitoring.workers(wait=False), "depths": monitoring.queue_depths()}


@require_GET
def monitoring_page(request):
    """For staff: workers per queue, what they run, queue depths, recent failures."""
    from django_celery_results.models import TaskResult

    from . import monitoring

    if not request.user.is_staff:
        raise Http404
    since = timezone.now() - timedelta(days=1)
    return render(request, "predictions/monitoring.html", {
        **monitoring.overview(),
        "failed_predictions": Prediction.objects.filter(status__in=[Status.FAILED, Status.PARTIAL], finished_at__gte=since)
        .select_related("experiment__lab", "pipeline").ended_latest()[:20],
        "failed_tasks": TaskResult.objects.filter(status="FAILURE", date_done__gte=since).order_by("-date_done")[:20],
        "flower_url": settings.FLOWER_URL,
    })


@require_GET
def history(request):
    """Every prediction the user may see, filtered and paginated (indexes in models.Meta)."""
    base = Prediction.objects.for_user(request.user).select_related(
        "experiment", "pipeline", "triggered_by").order_by("-created_at", "-pk")
    filterset = PredictionFilter(request.GET or None, queryset=base, request=request)
    page = EitherEndPaginator(filterset.qs, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "predictions/history.html", {
        "filter": filterset, "page": page, "query": query.urlencode(),
    })


def _id_param(request, name) -> int:
    """A prediction id from the query string; not a number is "not found", never a 500."""
    raw = request.GET.get(name, "")
    if not (raw.isascii() and raw.isdigit() and len(raw) < 19):   # also within a 64-bit id
        raise Http404(f"?{name}= must be a prediction id")
    return int(raw)


@require_GET
def compare(request):
    """Two predictions of one experiment side by side, per slide, with their differences."""
    visible = Prediction.objects.for_user(request.user).select_related("experiment", "pipeline", "model")
    a = get_object_or_404(visible, pk=_id_param(request, "a"))
    b = get_object_or_404(visible, pk=_id_param(request, "b"))
    if a.experiment_id != b.experiment_id:
        messages.error(request, "Only predictions of the same experiment can be compared.")
        return redirect(a)
    runs_a = {r.slide_id: r for r in a.runs.select_related("slide")}
    runs_b = {r.slide_id: r for r in b.runs.select_related("slide")}
    names = []
    for run in [*runs_a.values(), *runs_b.values()]:
        names += [k for k in (run.metrics or {}) if k not in names]
    rows = []
    for slide_id in sorted(set(runs_a) | set(runs_b), key=lambda i: (runs_a.get(i) or runs_b.get(i)).slide.original_name):
        ra, rb = runs_a.get(slide_id), runs_b.get(slide_id)
        slide = (ra or rb).slide
        for name in names:
            va = (ra.metrics or {}).get(name) if ra else None
            vb = (rb.metrics or {}).get(name) if rb else None
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
            diff = vb - va if numeric else None
            rows.append({"slide": slide.original_name, "name": name, "label": figures.label(name),
                         "a": figures.display(va), "b": figures.display(vb),
                         "diff": figures.display(diff) if diff is not None else "",
                         "sign": (diff > 0) - (diff < 0) if diff is not None else 0,
                         "relative": f"{100 * diff / va:+.1f}%" if numeric and va else ""})
    others = visible.filter(experiment=a.experiment).exclude(pk__in=[a.pk, b.pk])[:50]
    return render(request, "predictions/compare.html", {"a": a, "b": b, "rows": rows, "others": others})


def prediction_new(request, experiment_pk):
    experiment = get_object_or_404(Experiment.objects.for_user(request.user), pk=experiment_pk)
    pipelines = list(Pipeline.objects.enabled())
    chosen = request.POST.get("pipeline") or request.GET.get("pipeline")
    pipeline = next((p for p in pipelines if str(p.pk) == chosen), pipelines[0] if pipelines else None)
    if pipeline is None:
        messages.error(request, "No pipeline is enabled on this server; ask an admin.")
        return redirect(experiment)
    form = PredictionForm(request.POST if request.method == "POST" and "submit" in request.POST else None,
                          experiment=experiment, pipeline=pipeline, user=request.user)
    if form.is_bound and form.is_valid():
        try:
            prediction = services.submit_prediction(experiment, pipeline, form.cleaned_data["slides"],
                                                    form.cleaned_data["params"], user=request.user,
                                                    priority=form.cleaned_data["priority"])
        except services.SubmitError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{pipeline.title} queued on {prediction.runs.count()} slide(s).")
            return redirect(prediction)
    # For a model pipeline: the card of the model a prediction submitted now will use.
    model = engine.current_model(pipeline.model_name) if pipeline.model_name else None
    return render(request, "predictions/new.html", {
        "experiment": experiment, "pipelines": pipelines, "pipeline": pipeline, "form": form,
        "model_card": model.card() if model else None, "figures": pipeline.code.figures,
        # Registered pipeline packages that fail to load: said here, so nobody hunts for them.
        "unavailable": unavailable(),
    })


@require_GET
def prediction_detail(request, pk):
    prediction = _prediction(request, pk)
    context = _detail_context(prediction, with_plots=True)
    if request.user.is_staff:
        # For admins diagnosing a failure: the prediction's Celery tasks, tracebacks included.
        # Lab members see the reasons in words on each slide instead.
        context["tasks"] = task_records.prediction_tasks(prediction)
    return render(request, "predictions/detail.html", context)


@require_GET
def prediction_progress(request, pk):
    """The live part of the prediction page, polled while the prediction runs."""
    prediction = _prediction(request, pk)
    return render(request, "predictions/_progress.html", _detail_context(prediction, with_plots=prediction.is_final))


def _detail_context(prediction, with_plots=False):
    table = services.figures_table(prediction)
    runs, metric_names = table.runs, table.names
    for run in runs:
        run.metric_display = [figures.display(v) for v in run.values]
        if with_plots and run.status == Status.SUCCEEDED:
            run.plot = _tile_plot(prediction.pipeline, run)
    return {"prediction": prediction, "runs": runs, "metric_names": metric_names,
            "metric_labels": [(n, figures.label(n)) for n in metric_names],
            "provenance": prediction.provenance(), "eta": _eta(prediction)}


def _eta(prediction):
    """Where a queued or running prediction stands, as the page says it: {"seconds" left,
    "position" (0 once running), "queue", "estimated" (no measured history yet)}; None once ended."""
    if prediction.is_final:
        return None
    entry = queueing.entry(prediction.pk)
    return entry and {"seconds": entry["eta_seconds"], "position": entry["position"], "queue": entry["queue"],
                      "estimated": entry["estimated_without_history"]}


def _tile_plot(pipeline, run):
    if not pipeline.installed or not run.plan:
        return None
    rows = [row for batch in run.batches.order_by("index").values_list("rows", flat=True) for row in batch]
    return figures.tile_distribution(pipeline.code, Plan.from_json(run.plan), rows)


@require_POST
def prediction_cancel(request, pk):
    prediction = _prediction(request, pk)
    try:
        services.cancel_prediction(prediction, request.user)
    except services.CancelError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Prediction cancelled. Batches already running stop at their end.")
    return redirect(prediction)


@require_POST
def prediction_rerun(request, pk):
    old = _prediction(request, pk)
    try:
        new = services.rerun_prediction(old, request.user)
    except services.SubmitError as exc:
        messages.error(request, str(exc))
        return redirect(old)
    messages.success(request, f"Re-run queued as prediction #{new.pk}.")
    return redirect(new)


@require_GET
def prediction_figures_csv(request, pk):
    """Per-slide figures, one row per slide, columns the stable metric names."""
    response = HttpResponse(services.figures_csv(_prediction(request, pk)), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="prediction-{pk}-figures.csv"'
    return response


def _run(request, pk):
    return get_object_or_404(SlideRun.objects.filter(prediction__in=Prediction.objects.for_user(request.user))
                             .select_related("slide"), pk=pk)


@require_GET
def run_file(request, pk, name):
    """A result file of one slide run: an image by name, the tissue mask or the tile table."""
    run = _run(request, pk)
    table = services.tile_table(run) if name == "tiles.csv" else None
    if table:
        opened, filename = table
        return FileResponse(opened, content_type="text/csv", as_attachment=True, filename=filename)
    image = (run.images or {}).get(name.removesuffix(".png"))
    if image and name.endswith(".png"):
        return FileResponse(run.tile_table.storage.open(image["path"], "rb"), content_type="image/png")
    if name == "tissue_mask.png" and run.tissue_mask:  # the raw mask, for runs without such an image
        return FileResponse(run.tissue_mask.open("rb"), content_type="image/png")
    raise Http404("No such result file.")
