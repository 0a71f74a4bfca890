from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PredictionsConfig(AppConfig):
    name = "predictions"
    verbose_name = "Pipelines and predictions"

    def ready(self):
        from experiments import dependents, viewer_layers

        from .catalogue import sync_pipelines
        from .services import active_work_on, delete_predictions_of
        from .viewer_layers import finished_runs

        post_migrate.connect(sync_pipelines, sender=self)
        # The slide viewer (experiments) shows a slide's finished runs through this hook.
        viewer_layers.register(finished_runs)
        # Deleting slides waits for work on them; deleting an experiment takes its results along.
        dependents.register(guard=active_work_on, cleanup=delete_predictions_of)
