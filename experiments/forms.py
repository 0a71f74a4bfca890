from django import forms

from .models import Experiment, Lab, Slide, Stain


class ExperimentForm(forms.ModelForm):
    """Create an experiment, or edit one (its lab then stays as it is)."""

    class Meta:
        model = Experiment
        fields = ["lab", "name", "description", "stain", "notes"]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 3}),
            "notes": forms.Textarea(attrs={"rows": 3}),
        }
        help_texts = {
            "stain": "What the slides are stained with. Pipelines use it: a DAB pipeline refuses slides declared H&E. "
                     "Not declared: estimated from each slide. A slide can say otherwise on the experiment page.",
        }

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["lab"].queryset = Lab.objects.filter(members=user)
        if self.instance.pk:
            # An experiment never moves to another lab.
            self.fields["lab"].disabled = True
        elif self.fields["lab"].queryset.count() == 1:
            self.fields["lab"].initial = self.fields["lab"].queryset.first()

    def clean(self):
        data = super().clean()
        lab, name = data.get("lab"), data.get("name")
        taken = Experiment.objects.filter(lab=lab, name=name)
        if self.instance.pk:
            taken = taken.exclude(pk=self.instance.pk)
        if lab and name and taken.exists():
            self.add_error("name", f"{lab} already has an experiment called “{name}”.")
        return data


class SlideStainForm(forms.ModelForm):
    """A slide's own stain; the empty choice means "as its experiment"."""

    class Meta:
        model = Slide
        fields = ["stain"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        experiment = self.instance.experiment
        inherited = Stain(experiment.stain).label if experiment.stain else "not declared, estimated from the slide"
        self.fields["stain"].choices = [("", f"As the experiment ({inherited})"),
                                        *[(v, label) for v, label in Stain.choices if v]]
        self.fields["stain"].label = "Stain of this slide"
        self.fields["stain"].help_text = ""  # the table says where an empty choice leads
        self.fields["stain"].widget.attrs["aria-label"] = f"Stain of {self.instance.original_name}"

