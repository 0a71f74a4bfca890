"""Installs Histo-IA's built-in maintenance as periodic tasks (django-celery-beat), visible and
editable in the admin under "Periodic tasks". Run by the beat process (`make run`, docker/)."""

from django.conf import settings
from django.db import migrations
from django.utils import timezone

MAINTENANCE = [
    {
        "name": "Histo-IA: expire old task results",
        "task": "predictions.cpu.expire_task_results",
        "crontab": {"minute": "30", "hour": "3"},
        "expire_seconds": 6 * 3600,
        "description": "Deletes finished Celery task results older than TASK_RESULT_EXPIRE_DAYS days "
                       "(default 30). Predictions keep their own records.",
    },
    {
        "name": "Histo-IA: requeue or fail stuck predictions",
        "task": "predictions.cpu.sweep_stuck_predictions",
        "interval": (5, "minutes"),
        "expire_seconds": 5 * 60,
        "description": "A running prediction with no progress for STUCK_PREDICTION_MINUTES (default 15) whose "
                       "work is neither queued nor running has its missing steps sent again; after "
                       "STUCK_PREDICTION_MAX_REQUEUES tries (default 3) its unfinished slides fail with a reason.",
    },
    {
        "name": "Histo-IA: re-send queued predictions",
        "task": "predictions.cpu.resend_queued_predictions",
        "interval": (1, "minutes"),
        "expire_seconds": 60,
        "description": "Sends the start message again for predictions left queued because the broker was "
                       "unreachable when they were submitted (or whose message was lost).",
    },
]


def install(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")

    for spec in MAINTENANCE:
        schedule = {}
        if "interval" in spec:
            every, period = spec["interval"]
            schedule["interval"], _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        else:
            schedule["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=spec["crontab"]["minute"], hour=spec["crontab"]["hour"], day_of_week="*",
                day_of_month="*", month_of_year="*", timezone=settings.TIME_ZONE)
        PeriodicTask.objects.update_or_create(name=spec["name"], defaults={
            "task": spec["task"], "enabled": True, "expire_seconds": spec["expire_seconds"],
            "description": spec["description"], **schedule})
    # Celery's own daily cleanup deletes every row older than a day, queued tasks included; the
    # task above replaces it (settings: CELERY_RESULT_EXPIRES = None).
    PeriodicTask.objects.filter(task="celery.backend_cleanup").delete()
    # Tell a running beat that the schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def uninstall(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[spec["name"] for spec in MAINTENANCE]).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("predictions", "0002_prediction_stall_requeues"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
