from django.contrib import admin, messages
from django.db.models import Count

from . import engine
from .forms import RegisteredModelAdminForm
from .models import BatchResult, Pipeline, Prediction, RegisteredModel, SlideRun
from .pipelines import unavailable


@admin.register(Pipeline)
class PipelineAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "title", "enabled", "availability", "batch_queue", "model_name", "prediction_count"]
    list_filter = ["enabled", "installed", "batch_queue"]
    list_editable = ["enabled"]
    search_fields = ["name", "title", "description"]
    readonly_fields = ["name", "version", "installed", "batch_queue", "model_name", "param_schema", "steps", "created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n=Count("predictions"))

    @admin.display(description="predictions", ordering="n")
    def prediction_count(self, obj):
        return obj.n

    def has_add_permission(self, request):
        return False  # pipelines are code; their rows come from the registry on migrate

    def changelist_view(self, request, extra_context=None):
        # A registered package that fails to load has no row of its own to show: say so here.
        for item in unavailable():
            messages.warning(request, f"Pipeline {item.entry_point} (package {item.package or 'unknown'}) is "
                                      f"unavailable: {item.error}")
        return super().changelist_view(request, extra_context)

    @admin.display(description="available", ordering="installed")
    def availability(self, obj):
        if obj.installed:
            return "yes"
        broken = next((u for u in unavailable() if u.entry_point == obj.name), None)
        return f"no: {broken.error}" if broken else "no: its code is no longer installed"


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    form = RegisteredModelAdminForm
    list_display = ["name", "version", "enabled", "not_for_diagnosis", "tile_size", "mpp", "class_list", "short_sha",
                    "created_at"]
    list_filter = ["enabled", "not_for_diagnosis", "name"]
    search_fields = ["name", "version", "sha256", "description", "trained_on", "validation"]
    readonly_fields = ["sha256", "registered_by", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "version", "file", "sha256", "enabled", "registered_by", "created_at"]}),
        ("Input", {"fields": ["tile_size", "mpp", "mean", "std", "class_names"],
                   "description": "What the model takes and gives: tiles of this size at this resolution, "
                                  "normalised with mean/std, and its output classes in order."}),
        ("Model card", {"fields": ["description", "trained_on", "label_meanings", "stain_normalisation",
                                   "validation", "not_for_diagnosis"],
                        "description": "Shown on the run-a-pipeline page, in every prediction's provenance and in "
                                       "the API, so users can judge the figures the model gives."}),
    ]

    @admin.display(description="classes")
    def class_list(self, obj):
        return ", ".join(obj.class_names)

    @admin.display(description="sha256")
    def short_sha(self, obj):
        return obj.sha256[:12]

    def save_model(self, request, obj, form, change):
        if "file" in form.changed_data:
            obj.sha256 = ""  # recomputed from the new file in save()
        if not obj.registered_by_id:
            obj.registered_by = request.user
        super().save_model(request, obj, form, change)


class SlideRunInline(admin.TabularInline):
    model = SlideRun
    fields = ["slide", "status", "done_units", "total_units", "error", "metrics", "timings"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ["id", "pipeline", "experiment", "lab", "status", "priority", "trigger", "triggered_by",
                    "done_units", "total_units", "created_at", "finished_at"]
    list_filter = ["status", "priority", "trigger", "pipeline", "experiment__lab", "created_at"]
    search_fields = ["id", "experiment__name", "triggered_by__username", "schedule_name", "error"]
    list_select_related = ["pipeline", "experiment__lab", "triggered_by"]
    date_hierarchy = "created_at"
    raw_id_fields = ["experiment", "triggered_by", "cancelled_by", "rerun_of", "model"]
    readonly_fields = ["params", "model_sha256", "software_version", "done_units", "total_units",
                       "created_at", "started_at", "finished_at", "cancelled_at", "cancelled_by"]
    inlines = [SlideRunInline]
    actions = ["cancel"]

    @admin.display(ordering="experiment__lab__name")
    def lab(self, obj):
        return obj.experiment.lab

    @admin.action(description="Cancel the selected predictions")
    def cancel(self, request, queryset):
        done = 0
        for prediction in queryset:
            try:
                engine.cancel(prediction, request.user)
                done += 1
            except engine.CancelError:
                pass
        self.message_user(request, f"{done} prediction(s) cancelled.", messages.SUCCESS)


@admin.register(BatchResult)
class BatchResultAdmin(admin.ModelAdmin):
    list_display = ["run", "index", "tiles", "queue", "worker", "seconds", "finished_at"]
    list_filter = ["queue", "worker"]
    raw_id_fields = ["run"]
    readonly_fields = [f.name for f in BatchResult._meta.fields]
