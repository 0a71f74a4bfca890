from django.contrib import admin
from django.template.defaultfilters import filesizeformat

from .models import Experiment, Lab, Slide, Stain


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    list_display = ["name", "member_count", "manager_count", "experiment_count", "storage", "import_folder_shown",
                    "created_at"]
    search_fields = ["name", "members__username", "members__email"]
    filter_horizontal = ["members", "managers"]
    fields = ["name", "members", "managers", "storage_quota_gb", "storage", "import_folder"]
    readonly_fields = ["storage"]

    @admin.display(description="storage used")
    def storage(self, lab):
        used, quota = lab.storage_used(), lab.storage_quota_bytes
        shown = filesizeformat(used)
        return f"{shown} of {filesizeformat(quota)} ({100 * used / quota:.0f} %)" if quota else f"{shown} (no quota)"

    @admin.display(description="managers")
    def manager_count(self, lab):
        return lab.managers.count()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        # A manager is a member who may do more: one who is not a member yet becomes one.
        form.instance.members.add(*form.instance.managers.all())

    @admin.display(description="import folder (under SLIDE_IMPORT_ROOT)")
    def import_folder_shown(self, lab):
        return lab.import_folder_name

    @admin.display(description="members")
    def member_count(self, lab):
        return lab.members.count()

    @admin.display(description="experiments")
    def experiment_count(self, lab):
        return lab.experiments.count()


class SlideInline(admin.TabularInline):
    model = Slide
    fields = ["original_name", "status", "vendor", "width", "height", "mpp", "stain", "error"]
    readonly_fields = [f for f in fields if f != "stain"]  # a slide's own stain can be set here
    extra = 0
    show_change_link = True
    can_delete = False


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["name", "lab", "stain", "created_by", "created_at", "updated_at"]
    list_filter = ["lab", "stain", "created_at"]
    fields = ["lab", "name", "description", "stain", "notes", "created_by"]
    search_fields = ["name", "description", "notes", "lab__name", "created_by__username"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["lab"]
    raw_id_fields = ["created_by"]
    inlines = [SlideInline]


@admin.register(Slide)
class SlideAdmin(admin.ModelAdmin):
    list_display = ["original_name", "experiment", "lab", "status", "vendor", "dimensions",
                    "mpp", "stain", "effective_stain", "size_bytes", "created_at"]
    list_filter = ["status", "vendor", "source", "stain", "experiment__stain", "experiment__lab"]
    search_fields = ["original_name", "sha256", "experiment__name", "experiment__lab__name"]
    list_select_related = ["experiment__lab"]
    date_hierarchy = "created_at"
    readonly_fields = ["sha256", "size_bytes", "vendor", "width", "height", "level_count", "mpp",
                       "objective_power", "validated_at", "created_at"]
    raw_id_fields = ["experiment", "uploaded_by"]
    actions = ["revalidate"]

    @admin.display(ordering="experiment__lab__name")
    def lab(self, slide):
        return slide.experiment.lab

    @admin.display(description="stain used")
    def effective_stain(self, slide):
        value = slide.effective_stain
        return Stain(value).label if value else "not declared"

    @admin.display(description="size (px)")
    def dimensions(self, slide):
        return f"{slide.width} x {slide.height}" if slide.width else "—"

    @admin.action(description="Check the selected slides again")
    def revalidate(self, request, queryset):
        from django.db import transaction

        from .tasks import validate_slide

        ids = list(queryset.values_list("pk", flat=True))
        queryset.update(status=Slide.Status.PENDING, error="")
        for pk in ids:
            transaction.on_commit(lambda pk=pk: validate_slide.delay(pk))
        self.message_user(request, f"{len(ids)} slide(s) queued for checking.")
