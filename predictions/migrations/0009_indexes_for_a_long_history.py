# Indexes that keep a submit, the ETAs and the dashboard as fast after a year of work as on the first day.

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('experiments', '0005_roles_and_storage'),
        ('predictions', '0008_queue_indexes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='batchresult',
            index=models.Index(fields=['-finished_at'], name='batchresult_finished_idx'),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(condition=models.Q(('started_at__isnull', False), models.Q(('priority', 'urgent'), _negated=True)), fields=['turn'], name='prediction_served_turn_idx'),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(fields=['experiment', '-turn'], name='prediction_experiment_turn_idx'),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(condition=models.Q(('finished_at__isnull', False)), fields=['-finished_at', '-id'], name='prediction_ended_idx'),
        ),
        migrations.AddIndex(
            model_name='sliderun',
            index=models.Index(condition=models.Q(('status', 'succeeded')), fields=['-finished_at'], name='sliderun_succeeded_idx'),
        ),
    ]
