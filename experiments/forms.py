from django import forms

from .models import Experiment, Lab


class ExperimentForm(forms.ModelForm):
    class Meta:
        model = Experiment
        fields = ["lab", "name", "description", "notes"]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 3}),
            "notes": forms.Textarea(attrs={"rows": 3}),
        }

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["lab"].queryset = Lab.objects.filter(members=user)
        if self.fields["lab"].queryset.count() == 1:
            self.fields["lab"].initial = self.fields["lab"].queryset.first()

    def clean(self):
        data = super().clean()
        lab, name = data.get("lab"), data.get("name")
        if lab and name and Experiment.objects.filter(lab=lab, name=name).exists():
            self.add_error("name", f"{lab} already has an experiment called “{name}”.")
        return data


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class SlideUploadForm(forms.Form):
    files = forms.FileField(widget=MultipleFileInput(attrs={"multiple": True}), label="Slide files")

    def clean_files(self):
        return self.files.getlist("files")
