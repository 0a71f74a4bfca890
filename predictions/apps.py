from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PredictionsConfig(AppConfig):
    name = "predictions"
    verbose_name = "Pipelines and predictions"

    def ready(self):
        from .catalogue import sync_pipelines

        post_migrate.connect(sync_pipelines, sender=self)
