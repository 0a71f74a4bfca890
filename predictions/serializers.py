"""API representations of pipelines, registered models, predictions and their results."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from experiments.models import Experiment, Slide
from histoia.api_filters import MAX_ID

from . import queueing
from .models import Pipeline, Prediction, RegisteredModel, SlideRun
from .pipelines import ParamError

JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "choice": "string"}


def _absolute(context, path):
    request = context.get("request")
    return request.build_absolute_uri(path) if request else path


def params_json_schema(pipeline: Pipeline) -> dict:
    """The pipeline's parameters as a JSON Schema object (types, bounds, choices, defaults)."""
    properties = {}
    for param in pipeline.param_schema:
        prop = {"type": JSON_TYPES.get(param["type"], "string"), "title": param.get("label") or param["name"],
                "description": param.get("help", ""), "default": param.get("default")}
        if "min" in param:
            prop["minimum"] = param["min"]
        if "max" in param:
            prop["maximum"] = param["max"]
        if param.get("choices"):
            prop["enum"] = list(param["choices"])
        properties[param["name"]] = prop
    return {"type": "object", "properties": properties, "additionalProperties": False}


class ModelClassSerializer(serializers.Serializer):
    name = serializers.CharField()
    meaning = serializers.CharField(help_text="What the class means, as the model's card says; may be empty.")


class ModelCardSerializer(serializers.ModelSerializer):
    """A registered model with its card: RegisteredModel.card(), plus its id."""

    classes = serializers.SerializerMethodField(help_text="Output classes in order, each with its meaning.")

    class Meta:
        model = RegisteredModel
        fields = ["id", "name", "version", "sha256", "description", "trained_on", "classes", "mpp", "tile_size",
                  "mean", "std", "stain_normalisation", "validation", "not_for_diagnosis"]
        read_only_fields = fields

    @extend_schema_field(ModelClassSerializer(many=True))
    def get_classes(self, obj):
        return obj.card()["classes"]


class RegisteredModelSerializer(ModelCardSerializer):
    class Meta(ModelCardSerializer.Meta):
        fields = ModelCardSerializer.Meta.fields + ["class_names", "label_meanings", "enabled", "created_at"]
        read_only_fields = fields


class ModelRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = RegisteredModel
        fields = ["id", "name", "version", "sha256"]
        read_only_fields = fields


class PipelineSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:pipeline-detail")
    params = serializers.JSONField(source="param_schema", read_only=True,
                                   help_text="The parameters as declared: name, type, default, help, min, max, choices.")
    params_schema = serializers.SerializerMethodField(help_text="The parameters as a JSON Schema object.")
    current = serializers.SerializerMethodField(help_text="Whether new work of this name uses this version.")
    model = serializers.SerializerMethodField(
        help_text="The registered model new predictions use (model pipelines), with its model card.")
    figures = serializers.SerializerMethodField(
        help_text="The figures it reports: name (a prefix when `prefix`), label, unit, description.")

    class Meta:
        model = Pipeline
        fields = ["id", "url", "name", "version", "title", "description", "enabled", "current", "batch_queue",
                  "steps", "model_name", "model", "params", "params_schema", "figures"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_params_schema(self, obj):
        return params_json_schema(obj)

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_current(self, obj):
        current = Pipeline.objects.current(obj.name)
        return current is not None and current.pk == obj.pk

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_figures(self, obj):
        code = obj.code_if_installed
        return [figure.as_dict() for figure in code.figures] if code else []

    @extend_schema_field(ModelCardSerializer(allow_null=True))
    def get_model(self, obj):
        from . import engine

        model = engine.current_model(obj.model_name) if obj.model_name else None
        return ModelCardSerializer(model).data if model else None


class SlideRunSerializer(serializers.ModelSerializer):
    slide_name = serializers.CharField(source="slide.original_name", read_only=True)
    progress = serializers.FloatField(read_only=True, help_text="0 to 1.")

    class Meta:
        model = SlideRun
        fields = ["id", "slide", "slide_name", "slide_sha256", "status", "error", "progress", "done_units",
                  "total_units", "started_at", "finished_at", "declared_stain", "stain_estimate"]
        read_only_fields = fields


class PredictionSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="api:prediction-detail")
    page_url = serializers.SerializerMethodField()
    experiment_name = serializers.CharField(source="experiment.name", read_only=True)
    lab = serializers.IntegerField(source="experiment.lab_id", read_only=True)
    pipeline = serializers.CharField(source="pipeline.name", read_only=True)
    pipeline_version = serializers.CharField(source="pipeline.version", read_only=True)
    pipeline_title = serializers.CharField(source="pipeline.title", read_only=True)
    model = ModelRefSerializer(read_only=True, allow_null=True)
    triggered_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    cancelled_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress = serializers.FloatField(read_only=True, help_text="0 to 1, in tiles (plus prepare and aggregate).")

    class Meta:
        model = Prediction
        fields = ["id", "url", "page_url", "experiment", "experiment_name", "lab", "pipeline", "pipeline_version",
                  "pipeline_title", "model", "model_sha256", "params", "priority", "status", "error", "trigger",
                  "triggered_by", "schedule_name", "rerun_of", "progress", "done_units", "total_units",
                  "created_at", "started_at", "finished_at", "cancelled_at", "cancelled_by", "software_version"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_page_url(self, obj):
        return _absolute(self.context, obj.get_absolute_url())


class PredictionDetailSerializer(PredictionSerializer):
    """One prediction with its slides, where it stands in the queue and the links to act on it."""

    status_url = serializers.SerializerMethodField(help_text="Poll this URL for progress.")
    runs = SlideRunSerializer(many=True, read_only=True)
    queue_position = serializers.SerializerMethodField(
        help_text="Queued: 1 = next to start. Running: 0. Ended: null.")
    eta_seconds = serializers.SerializerMethodField(help_text="Estimated seconds until it ends; null once ended.")
    provenance = serializers.SerializerMethodField(
        help_text="Pipeline and version, model, model sha256, parameters, software version, trigger and times; "
                  "`model_card` is the model's card (trained on, classes and their meanings, µm/px, stain "
                  "normalisation, validation, not_for_diagnosis), null without a model.")
    links = serializers.SerializerMethodField()

    class Meta(PredictionSerializer.Meta):
        fields = PredictionSerializer.Meta.fields + ["status_url", "runs", "queue_position", "eta_seconds",
                                                     "provenance", "links"]
        read_only_fields = fields

    def _queue_entry(self, obj):
        if obj.is_final:
            return None
        if not hasattr(obj, "_queue_entry"):
            obj._queue_entry = queueing.entry(obj.pk)
        return obj._queue_entry

    @extend_schema_field(OpenApiTypes.URI)
    def get_status_url(self, obj):
        return _absolute(self.context, reverse("api:prediction-detail", args=[obj.pk]))

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_queue_position(self, obj):
        entry = self._queue_entry(obj)
        return entry["position"] if entry else None

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_eta_seconds(self, obj):
        entry = self._queue_entry(obj)
        return entry["eta_seconds"] if entry else None

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_provenance(self, obj):
        return obj.provenance()

    @extend_schema_field({"type": "object", "properties": {k: {"type": "string", "format": "uri"} for k in
                                                           ("results", "results_csv", "cancel", "rerun")}})
    def get_links(self, obj):
        return {name: _absolute(self.context, reverse(f"api:prediction-{view}", args=[obj.pk]))
                for name, view in (("results", "results"), ("results_csv", "results-csv"), ("cancel", "cancel"),
                                   ("rerun", "rerun"))}


class PredictionCreateSerializer(serializers.Serializer):
    experiment = serializers.PrimaryKeyRelatedField(
        queryset=Experiment.objects.none(), help_text="Id of an experiment of one of your labs.",
        error_messages={"does_not_exist": "No experiment {pk_value} in your labs."})
    pipeline = serializers.CharField(max_length=100, help_text="Pipeline name, as listed at /api/v1/pipelines/.")
    pipeline_version = serializers.CharField(max_length=20, required=False,
                                             help_text="A version of the pipeline; the current one when left out.")
    slides = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=MAX_ID), required=False,
                                   allow_empty=False,
                                   max_length=10_000,
                                   help_text="Slide ids of the experiment; all its ready slides when left out.")
    params = serializers.DictField(required=False, help_text="Pipeline parameters; defaults for those left out.")
    priority = serializers.ChoiceField(choices=Prediction.Priority.choices, default=Prediction.Priority.NORMAL,
                                       help_text="Urgent runs before normal work still waiting.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            self.fields["experiment"].queryset = Experiment.objects.for_user(request.user)

    def validate(self, data):
        experiment = data["experiment"]
        name, version = data["pipeline"], data.get("pipeline_version")
        if version:
            pipeline = Pipeline.objects.filter(name=name, version=version, installed=True).first()
        else:
            pipeline = Pipeline.objects.current(name)
        if pipeline is None:
            known = sorted({p.name for p in Pipeline.objects.enabled()})
            wanted = f"“{name}” version {version}" if version else f"“{name}”"
            raise serializers.ValidationError(
                {"pipeline": [f"Unknown pipeline {wanted}. Available: {', '.join(known) or 'none'}."]})
        if not pipeline.enabled:
            raise serializers.ValidationError({"pipeline": [f"The pipeline {pipeline} is disabled."]})
        try:
            data["params"] = pipeline.code.parse_params(data.get("params"))
        except ParamError as exc:
            raise serializers.ValidationError({"params": [str(exc)]}) from exc
        if "slides" in data:
            ids = list(dict.fromkeys(data["slides"]))
            slides = list(experiment.slides.filter(pk__in=ids))
            missing = sorted(set(ids) - {s.pk for s in slides})
            if missing:
                raise serializers.ValidationError({"slides": [
                    f"Not slides of experiment {experiment.pk}: {', '.join(map(str, missing))}."]})
            not_ready = [f"{s.original_name} ({s.get_status_display().lower()})" for s in slides
                         if s.status != Slide.Status.READY]
            if not_ready:
                raise serializers.ValidationError({"slides": [f"These slides are not ready: {', '.join(not_ready)}."]})
        else:
            slides = None  # every ready slide of the experiment: services.submit_prediction picks them
        data["pipeline"], data["slides"] = pipeline, slides
        return data


class ResultSlideSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    slide = serializers.IntegerField()
    slide_name = serializers.CharField()
    slide_sha256 = serializers.CharField()
    status = serializers.CharField()
    error = serializers.CharField()
    metrics = serializers.DictField(allow_null=True, help_text="Figures by their stable names (README, Figures).")
    timings = serializers.DictField()
    tile_table_url = serializers.URLField(allow_null=True)


class ResultsSerializer(serializers.Serializer):
    prediction = serializers.IntegerField()
    status = serializers.CharField()
    metric_names = serializers.ListField(child=serializers.CharField())
    slides = ResultSlideSerializer(many=True)
    provenance = serializers.DictField()


class QueueEntrySerializer(serializers.Serializer):
    position = serializers.IntegerField(help_text="0: running; 1: next to start; counts every lab's work.")
    status = serializers.CharField()
    queue = serializers.CharField(help_text="The queue its tile batches run on (cpu or gpu).")
    eta_seconds = serializers.IntegerField(help_text="Estimated seconds until it ends.")
    estimated_without_history = serializers.BooleanField(
        help_text="True when the pipeline has no measured history here and a conservative default was used.")
    throughput = serializers.DictField(help_text="Measured tiles per second (per worker process) and its basis.")
    prediction = PredictionSerializer()


class QueueSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = QueueEntrySerializer(many=True)


class WorkerSerializer(serializers.Serializer):
    name = serializers.CharField()
    queues = serializers.ListField(child=serializers.CharField())
    concurrency = serializers.IntegerField(allow_null=True)
    active = serializers.ListField(child=serializers.DictField())
    tasks_known = serializers.BooleanField(help_text="False while a web process that has just started asks the "
                                           "workers what they run: `active` is empty until it knows.")
    processed = serializers.IntegerField(allow_null=True)
    pid = serializers.IntegerField(allow_null=True)
    uptime_s = serializers.IntegerField(allow_null=True)


class QueueDepthSerializer(serializers.Serializer):
    name = serializers.CharField()
    messages = serializers.IntegerField(allow_null=True, help_text="Waiting in the broker; null when unknown.")
    workers = serializers.IntegerField()
    concurrency = serializers.IntegerField()
    running = serializers.IntegerField()


class WorkersSerializer(serializers.Serializer):
    workers = WorkerSerializer(many=True)
    queues = QueueDepthSerializer(many=True)
    checked_at = serializers.DateTimeField()

