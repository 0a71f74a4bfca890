"""The order predictions run in: one policy, used by the dispatcher and by the queue pages.

Policy (README, "The queue"):

1. Predictions already started come first, in the order they started: their work is under way
   and is finished before new work begins.
2. Then the waiting ones: urgent before normal; within each, labs take turns. Each prediction
   is given a turn when it is submitted (turn_after): one more than its lab's last turn, and never
   earlier than the round being served now (the highest turn started; urgent work, which runs
   out of turn, does not move it). A lab that queues 200 predictions takes turns 1..200; another
   lab submitting next joins the round being served, so it runs next, not after the 200. Turns
   are fixed at submit: work ending or starting never reorders the waiting predictions among
   themselves, so the order shown stays the order run (a later submit can only come in
   between). Equal turns go oldest first.

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
    turn: int = 0


def turn_after(served: int, lab_last: int) -> int:
    """The turn of a prediction submitted now: after its lab's last one (lab_last), and never
    before the round being served (served: the highest turn already started), which a lab with
    nothing in that round joins."""
    return max(served, lab_last + 1)


def run_order(entries: list[Entry]) -> list[Entry]:
    """The entries in the order they run (see the module docstring)."""
    started = sorted((e for e in entries if e.started), key=lambda e: (e.started_at or e.created_at, e.pk))
    waiting = sorted((e for e in entries if not e.started), key=lambda e: (not e.urgent, e.turn, e.created_at, e.pk))
    return started + waiting
