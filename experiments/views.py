"""Pages for experiments and their slides. Every lookup goes through .for_user(): another lab's
objects do not exist for this user (404), they are not merely forbidden."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_POST

from . import services, uploads
from .forms import ExperimentForm, SlideStainForm
from .models import Experiment, Lab, Slide, Stain


def storage_of(lab: Lab) -> dict:
    """What the pages show of a lab's storage: used and quota (bytes; quota 0 = no limit)."""
    used, quota = lab.storage_used(), lab.storage_quota_bytes
    return {"lab": lab, "used": used, "quota": quota, "percent": round(100 * used / quota) if quota else None}


@require_GET
def experiment_list(request):
    experiments = services.experiments_with_counts(request.user).select_related("lab", "created_by")
    labs = Lab.objects.filter(members=request.user)
    return render(request, "experiments/list.html", {
        "experiments": experiments,
        "has_lab": labs.exists(),
        "storage": [storage_of(lab) for lab in labs],
    })


def experiment_create(request):
    form = ExperimentForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        experiment = form.save(commit=False)
        experiment.created_by = request.user
        experiment.save()
        messages.success(request, f"Experiment “{experiment.name}” created. Add slides to it below.")
        return redirect(experiment)
    return render(request, "experiments/create.html", {"form": form})


def _experiment(request, pk):
    return get_object_or_404(Experiment.objects.for_user(request.user).select_related("lab"), pk=pk)


def experiment_edit(request, pk):
    """Rename, describe or declare the stain of an experiment of one of the user's labs."""
    experiment = _experiment(request, pk)
    saved_name = experiment.name  # the form writes what was typed onto the instance, valid or not
    form = ExperimentForm(request.POST or None, instance=experiment, user=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, f"Experiment “{experiment.name}” saved.")
        return redirect(experiment)
    return render(request, "experiments/create.html", {"form": form, "editing": experiment, "saved_name": saved_name})


@require_GET
def experiment_detail(request, pk):
    experiment = _experiment(request, pk)
    return render(request, "experiments/detail.html", {
        **_slide_table(experiment, request),
        "predictions": experiment.predictions.select_related("pipeline", "triggered_by")[:20],
        "max_upload": uploads.human_size(settings.SLIDE_UPLOAD_MAX_BYTES),
        "import_enabled": uploads.import_enabled(),
        "storage": storage_of(experiment.lab),
        "is_manager": experiment.lab.is_manager(request.user),
    })


@require_GET
def experiment_slides(request, pk):
    """The slide table alone, polled by the experiment page while slides are pending."""
    experiment = _experiment(request, pk)
    return render(request, "experiments/_slides.html", _slide_table(experiment, request))


def _slide_table(experiment, request):
    slides = list(experiment.slides.all())
    for slide in slides:
        # What the table shows: the stain pipelines will use, and where it comes from.
        effective = slide.effective_stain
        slide.stain_label = Stain(effective).label if effective else "Not declared"
        slide.stain_source = "slide" if slide.stain else ("experiment" if experiment.stain else "")
        slide.stain_form = SlideStainForm(instance=slide, auto_id=f"id_slide{slide.pk}_%s")
    return {
        "experiment": experiment,
        "slides": slides,
        "is_manager": experiment.lab.is_manager(request.user),
        "any_pending": any(s.status == Slide.Status.PENDING for s in slides),
    }


@csrf_protect
@require_POST
def slide_upload(request, pk):
    # Touching request.FILES runs the streaming upload handlers; a file over the limit is cut
    # off there and request.upload_too_large tells us so.
    files = request.FILES.getlist("files")
    experiment = _experiment(request, pk)
    if getattr(request, "upload_too_large", False):
        messages.error(request, f"That file is larger than the upload limit of {uploads.human_size(settings.SLIDE_UPLOAD_MAX_BYTES)}; nothing was stored. Large slides can be imported from the lab's file share instead.")
        return redirect(experiment)
    if not files:
        messages.error(request, "Choose at least one slide file to upload.")
        return redirect(experiment)
    try:
        slides = services.upload_slides(experiment, files, request.user)
    except services.StorageQuotaExceeded as exc:
        messages.error(request, f"Nothing was stored: {exc}")
        return redirect(experiment)
    names = ", ".join(s.original_name for s in slides)
    messages.success(request, f"Uploaded {names}. Each slide is now being checked; this page updates by itself.")
    return redirect(experiment)


def slide_import(request, pk):
    experiment = _experiment(request, pk)
    if request.method == "POST":
        paths = request.POST.getlist("paths")
        if not paths:
            messages.error(request, "Tick at least one file to import.")
            return redirect("experiments:import", pk=experiment.pk)
        try:
            slides = services.import_slides(experiment, paths, request.user)
        except (uploads.ImportPathError, services.StorageQuotaExceeded) as exc:
            messages.error(request, str(exc))
            return redirect("experiments:import", pk=experiment.pk)
        messages.success(request, f"Importing {len(slides)} slide(s); each is copied in and checked in the background.")
        return redirect(experiment)
    folder = request.GET.get("folder", "")
    try:
        current, entries = uploads.list_import_folder(folder, experiment.lab)
        error = None
    except uploads.ImportPathError as exc:
        current, entries, error = folder, [], str(exc)
    parent = current.rsplit("/", 1)[0] if "/" in current else ("" if current else None)
    return render(request, "experiments/import.html", {
        "experiment": experiment, "entries": entries, "folder": current,
        "parent": parent, "error": error,
    }, status=200 if error is None else 400)


@csrf_protect
@require_POST
def slide_stain(request, pk):
    """Set (or clear, back to the experiment's) the stain of one slide of the user's labs."""
    slide = get_object_or_404(Slide.objects.for_user(request.user).select_related("experiment"), pk=pk)
    form = SlideStainForm(request.POST, instance=slide)
    if form.is_valid():
        form.save()
        effective = slide.effective_stain
        shown = Stain(effective).label if effective else "not declared (estimated from the slide)"
        messages.success(request, f"{slide.original_name}: stain {shown}"
                                  f"{'' if slide.stain else ', as the experiment'}.")
    else:
        messages.error(request, f"{slide.original_name}: {' '.join(form.errors.get('stain', []))}")
    return redirect(slide.experiment)


@require_GET
def slide_thumbnail(request, pk):
    slide = get_object_or_404(Slide.objects.for_user(request.user), pk=pk)
    if not slide.thumbnail:
        raise Http404("This slide has no thumbnail yet.")
    return FileResponse(slide.thumbnail.open("rb"), content_type="image/png")


def _confirm_delete(request, lab, context):
    if not lab.is_manager(request.user):
        raise PermissionDenied(services.NOT_A_MANAGER)
    return render(request, "experiments/confirm_delete.html", context)


def experiment_delete(request, pk):
    """GET: what deleting the experiment removes; POST: delete it (lab managers and staff)."""
    experiment = _experiment(request, pk)
    if request.method == "POST":
        try:
            services.delete_experiment(experiment, request.user)
        except services.DeleteRefused as exc:
            messages.error(request, f"Not deleted: {exc}")
            return redirect(experiment)
        messages.success(request, f"Experiment “{experiment.name}” deleted, with its slides and results.")
        return redirect("experiments:list")
    slides = experiment.slides.exclude(status=Slide.Status.DELETED)
    return _confirm_delete(request, experiment.lab, {
        "experiment": experiment, "what": f"the experiment “{experiment.name}”",
        "consequences": [
            f"its {slides.count()} slide(s) and their files ({uploads.human_size(sum(s.size_bytes or 0 for s in slides))})",
            f"its {experiment.predictions.count()} prediction(s), with every figure, table and overlay computed",
        ],
        "cancel_url": experiment.get_absolute_url(),
    })


def slide_delete(request, pk):
    """GET: what deleting the slide removes; POST: delete it (lab managers and staff)."""
    slide = get_object_or_404(Slide.objects.for_user(request.user).select_related("experiment__lab"), pk=pk)
    experiment = slide.experiment
    if request.method == "POST":
        try:
            outcome = services.delete_slide(slide, request.user)
        except services.DeleteRefused as exc:
            messages.error(request, f"{slide.original_name} was not deleted: {exc}")
            return redirect(experiment)
        kept = " Results computed from it stay readable." if outcome == "kept" else ""
        messages.success(request, f"{slide.original_name} deleted; its file is removed from storage.{kept}")
        return redirect(experiment)
    return _confirm_delete(request, experiment.lab, {
        "experiment": experiment, "what": f"the slide “{slide.original_name}”",
        "consequences": [f"its file ({uploads.human_size(slide.size_bytes or 0)}), thumbnail and viewer tiles"],
        "kept": "Results already computed from it stay readable, with the slide's name, checksum and who "
                "deleted it when." if slide.runs.exists() else "",
        "cancel_url": experiment.get_absolute_url(),
    })
