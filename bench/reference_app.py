"""The reference Histo-IA's submit is measured against (bench/reference_submit.py): the smallest
honest "accept and return the task id" web service, on the same broker.

One WSGI function, served by the same gunicorn settings as Histo-IA: a POST with a JSON body
publishes one Celery task carrying that body (to its own queue, which no worker consumes) and
answers 202 with the task id. No authentication, no database, no validation: what is left is the
web server, JSON and one publish, the floor under any submit.
"""

import json

from celery import Celery
from django.conf import settings   # only to read the broker settings: no Django app is loaded

# The broker Histo-IA uses, with the same transport options (publisher confirms on RabbitMQ), and
# none of its signal handlers (task rows): a bare Celery client.
app = Celery("reference", broker=settings.CELERY_BROKER_URL)
app.conf.broker_transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS


def application(environ, start_response):
    if environ["REQUEST_METHOD"] != "POST":
        start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
        return [b"POST only\n"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
    except ValueError:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"not JSON\n"]
    result = app.send_task("reference.accept", args=[body], queue="reference")  # no worker consumes it
    answer = json.dumps({"task_id": result.id}).encode()
    start_response("202 Accepted", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
    return [answer]
