"""The two work queues and the message priorities, as plain constants.

App code needs them without the Celery app (predictions.models turns a prediction's priority
into a message priority, predictions.monitoring counts messages per queue), and the Celery app
is built from them (histoia/celery.py). Importing this module starts nothing.

A task's name says where it runs: `<app>.<queue>.<task>`, e.g. `predictions.gpu.tile_batch` or
`experiments.cpu.validate_slide`; histoia/celery.py routes on the queue part of the name.
"""

CPU = "cpu"
GPU = "gpu"
QUEUE_NAMES = (CPU, GPU)

MAX_PRIORITY = 10  # the queues' x-max-priority (histoia/celery.py)
PRIORITY_LOW = 1   # behind every step: a prediction's start message (predictions/engine.py)
PRIORITY_NORMAL = 5
PRIORITY_URGENT = 9  # "urgent" predictions overtake normal work still waiting in the queue
