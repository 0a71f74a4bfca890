"""Pipeline.version_order: lists of pipeline versions sort as versions (1.10 after 1.9), not as text."""

from django.db import migrations, models


def number_versions(apps, schema_editor):
    from predictions.versions import version_key

    Pipeline = apps.get_model("predictions", "Pipeline")
    for name in set(Pipeline.objects.values_list("name", flat=True)):
        rows = sorted(Pipeline.objects.filter(name=name).values_list("pk", "version"),
                      key=lambda row: (version_key(row[1]), row[0]))
        for number, (pk, _) in enumerate(rows):
            Pipeline.objects.filter(pk=pk).update(version_order=number)


class Migration(migrations.Migration):

    dependencies = [
        ("predictions", "0005_sliderun_stain_estimate"),
    ]

    operations = [
        migrations.AddField(
            model_name="pipeline",
            name="version_order",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(number_versions, migrations.RunPython.noop),
        migrations.AlterModelOptions(
            name="pipeline",
            options={"ordering": ["name", "-version_order", "-pk"]},
        ),
    ]
