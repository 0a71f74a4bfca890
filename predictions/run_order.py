"""The order predictions run in: one policy, used by the dispatcher and by the queue pages.

Policy (README, "The queue"):

1. Predictions already started come first, in the order they started: their work is under way
   and is finished before new work begins.
2. Then the waiting ones: urgent before normal; within each, labs take turns. A prediction's
   turn is how many predictions of its own lab are ahead of it (started ones included), so a
   lab with 200 predictions waiting has one in every round, like every other lab, and a lab's
   own predictions keep the order they were submitted in. Equal turns go oldest first.

Plain Python over plain values, so the dashboard and the dispatcher compute the same order and
a queue of thousands is ordered in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Entry:
    pk: int
    lab: int
    urgent: bool
    started: bool
    created_at: datetime
    started_at: datetime | None = None


def run_order(entries: list[Entry]) -> list[Entry]:
    """The entries in the order they run (see the module docstring)."""
    started = sorted((e for e in entries if e.started), key=lambda e: (e.started_at or e.created_at, e.pk))
    waiting = sorted((e for e in entries if not e.started), key=lambda e: (not e.urgent, e.created_at, e.pk))
    ahead_in_lab: dict[int, int] = {}
    for e in started:
        ahead_in_lab[e.lab] = ahead_in_lab.get(e.lab, 0) + 1
    turns = {}
    for e in waiting:   # urgent first, then oldest first: the order within each lab
        turns[e.pk] = ahead_in_lab.get(e.lab, 0)
        ahead_in_lab[e.lab] = turns[e.pk] + 1
    waiting.sort(key=lambda e: (not e.urgent, turns[e.pk], e.created_at, e.pk))
    return started + waiting
