"""django-celery-results' database backend, made to ride out a database restart.

Celery writes a task's state (started, succeeded, failed) outside the task body. When the
database is briefly away, the stock backend raises there; in the gpu worker's solo pool that
error reaches the worker itself, which stops ("Unrecoverable error"). With this backend every
such write is retried, on a fresh connection, for about a minute (result_backend_* settings in
histoia/celery.py) before giving up.
"""

from django.db import connection
from django.db.utils import InterfaceError, OperationalError
from django_celery_results.backends.database import DatabaseBackend


class RetryingDatabaseBackend(DatabaseBackend):
    def exception_safe_to_retry(self, exc):
        if isinstance(exc, (OperationalError, InterfaceError)):
            connection.close()  # the next attempt opens a new connection
            return True
        return super().exception_safe_to_retry(exc)
