"""The run-a-pipeline form, built from the pipeline's declared parameters; the admin's registered-model form."""

from django import forms

from experiments.models import Slide

from .models import Prediction, RegisteredModel
from .pipelines import ParamError


def _field_for(param):
    common = {"label": param.label or param.name, "help_text": param.help, "required": False,
              "initial": param.default}
    if param.type == "bool":
        return forms.BooleanField(**common)
    if param.type == "choice":
        return forms.ChoiceField(choices=[(c, c) for c in param.choices], **common)
    # Typed as text and parsed by Param.parse, so the user sees the pipeline's own message.
    attrs = {"inputmode": "decimal"}
    if param.min is not None:
        attrs["data-min"] = param.min
    if param.max is not None:
        attrs["data-max"] = param.max
    return forms.CharField(widget=forms.TextInput(attrs=attrs), **common)


class PredictionForm(forms.Form):
    slides = forms.ModelMultipleChoiceField(queryset=Slide.objects.none(), widget=forms.CheckboxSelectMultiple,
                                            help_text="Only slides that are ready can be analysed.")
    priority = forms.ChoiceField(choices=Prediction.Priority.choices, initial=Prediction.Priority.NORMAL,
                                 help_text="Urgent runs before normal work that is still waiting.")

    def __init__(self, *args, experiment, pipeline, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.pipeline = pipeline
        if not experiment.lab.is_manager(user):
            self.fields["priority"].choices = [(Prediction.Priority.NORMAL, Prediction.Priority.NORMAL.label)]
            self.fields["priority"].help_text = "Urgent priority is for the lab's managers and staff."
        ready = experiment.slides.filter(status=Slide.Status.READY)
        self.fields["slides"].queryset = ready
        self.fields["slides"].initial = list(ready.values_list("pk", flat=True))
        self.param_names = []
        for param in pipeline.code.params:
            self.fields[f"param_{param.name}"] = _field_for(param)
            self.param_names.append(param.name)

    def clean(self):
        data = super().clean()
        raw = {name: data.get(f"param_{name}") for name in self.param_names}
        params = {}
        for param in self.pipeline.code.params:
            try:
                params[param.name] = param.parse(raw[param.name])
            except ParamError as exc:
                self.add_error(f"param_{param.name}", str(exc))
        if not self.errors:
            try:
                data["params"] = self.pipeline.code.parse_params(params)
            except ParamError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return data


class RegisteredModelAdminForm(forms.ModelForm):
    """The admin's form for a registered model: the card's class meanings must name its classes."""

    class Meta:
        model = RegisteredModel
        fields = "__all__"
        widgets = {
            "trained_on": forms.Textarea(attrs={"rows": 3}),
            "validation": forms.Textarea(attrs={"rows": 2}),
        }

    def clean(self):
        data = super().clean()
        classes, meanings = data.get("class_names"), data.get("label_meanings")
        if meanings in (None, ""):
            data["label_meanings"] = meanings = {}
        if not isinstance(meanings, dict) or not all(isinstance(v, str) for v in meanings.values()):
            self.add_error("label_meanings", 'Give an object of class name to meaning, e.g. {"tumour": "invasive '
                                             'carcinoma"}.')
        elif isinstance(classes, list):
            unknown = [name for name in meanings if name not in classes]
            if unknown:
                self.add_error("label_meanings", f"Not classes of this model: {', '.join(unknown)}. "
                                                 f"Its classes: {', '.join(map(str, classes))}.")
        return data
