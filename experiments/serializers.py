"""API representations of labs, experiments and slides."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Experiment, Lab, Slide, Stain

STAIN_VALUES = ", ".join(f"“{value}” ({label})" for value, label in Stain.choices)


def stain_field(help_text):
    """The stain as a choice, with a 400 that lists what is accepted."""
    return serializers.ChoiceField(
        choices=Stain.choices, required=False, allow_blank=True, help_text=help_text,
        error_messages={"invalid_choice": f"“{{input}}” is not a stain Histo-IA knows. Use one of: {STAIN_VALUES}."})


class LabSerializer(serializers.ModelSerializer):
    class Meta:
        model = Lab
        fields = ["id", "name"]


class UserLabs(serializers.PrimaryKeyRelatedField):
    """A lab id, chosen among the requesting user's labs only."""

    def get_queryset(self):
        request = self.context.get("request")
        if request is None or not request.user.is_authenticated:
            return Lab.objects.none()
        return Lab.objects.filter(members=request.user)


class ExperimentSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:experiment-detail")
    lab = UserLabs(required=False, help_text="Id of one of your labs; may be left out when you belong to one lab only.")
    lab_name = serializers.CharField(source="lab.name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    stain = stain_field("The stain of the experiment's slides: he (H&E), hdab (IHC hematoxylin-DAB), other, or "
                        "empty: not declared, estimated from each slide. A slide can say otherwise.")
    slide_count = serializers.IntegerField(read_only=True)
    ready_slide_count = serializers.IntegerField(read_only=True)
    slides_url = serializers.SerializerMethodField()
    page_url = serializers.SerializerMethodField()

    class Meta:
        model = Experiment
        fields = ["id", "url", "name", "description", "notes", "stain", "lab", "lab_name", "created_by", "created_at",
                  "updated_at", "slide_count", "ready_slide_count", "slides_url", "page_url"]
        read_only_fields = ["created_at", "updated_at"]
        # The name is checked per lab in validate(), with a message that says so.
        validators = []

    @extend_schema_field(OpenApiTypes.URI)
    def get_slides_url(self, obj):
        return self._absolute(reverse("api:experiment-slides", args=[obj.pk]))

    @extend_schema_field(OpenApiTypes.URI)
    def get_page_url(self, obj):
        return self._absolute(obj.get_absolute_url())

    def _absolute(self, path):
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path

    def validate(self, data):
        lab = data.get("lab") or (self.instance.lab if self.instance else None)
        if lab is None:
            labs = list(self.fields["lab"].get_queryset()[:2])
            if len(labs) != 1:
                raise serializers.ValidationError(
                    {"lab": ["Choose the lab this experiment belongs to." if labs else "You are not a member of any lab."]})
            lab = data["lab"] = labs[0]
        if self.instance is not None and "lab" in data and data["lab"] != self.instance.lab:
            raise serializers.ValidationError({"lab": ["An experiment cannot move to another lab."]})
        name = data.get("name", self.instance.name if self.instance else None)
        taken = Experiment.objects.filter(lab=lab, name=name)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if name and taken.exists():
            raise serializers.ValidationError({"name": [f"{lab} already has an experiment called “{name}”."]})
        return data


class SlideSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:slide-detail")
    uploaded_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    mpp_missing = serializers.BooleanField(read_only=True)
    thumbnail_url = serializers.SerializerMethodField()
    stain = stain_field("The slide's own stain (he, hdab, other); empty: as its experiment. The only field "
                        "a PATCH changes.")
    effective_stain = serializers.CharField(
        read_only=True, help_text="The stain pipelines use: the slide's own, else its experiment's (he, hdab or "
                                  "other); empty when neither declares one.")

    class Meta:
        model = Slide
        fields = ["id", "url", "experiment", "original_name", "source", "import_path", "status", "error", "sha256",
                  "size_bytes", "vendor", "width", "height", "level_count", "mpp", "mpp_missing",
                  "objective_power", "stain", "effective_stain", "thumbnail_url", "uploaded_by", "created_at",
                  "validated_at", "conversion", "deleted_at"]
        read_only_fields = [f for f in fields if f != "stain"]

    @extend_schema_field(OpenApiTypes.URI)
    def get_thumbnail_url(self, obj):
        if not obj.thumbnail:
            return None
        path = reverse("api:slide-thumbnail", args=[obj.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


class SlideUploadSerializer(serializers.Serializer):
    """multipart/form-data with one or more files under `files`."""

    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), allow_empty=False,
                                  help_text="One or more slide files (SVS, NDPI, SCN, MRXS, TIFF, DICOM, PNG, JPEG…).")


class SlideImportSerializer(serializers.Serializer):
    paths = serializers.ListField(
        child=serializers.CharField(max_length=1000, trim_whitespace=False), allow_empty=False, max_length=500,
        help_text="Paths of slide files relative to the lab's file share (SLIDE_IMPORT_ROOT).")
