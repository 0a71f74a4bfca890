"""The run-order policy on its own: started work first, urgent next, labs take turns, with each
prediction's turn fixed when it is submitted."""

from datetime import datetime, timedelta

from predictions.run_order import Entry, run_order, turn_after

T0 = datetime(2026, 12, 1, 9, 0)


class Queue:
    """Submits and starts as the engine does them, over plain entries."""

    def __init__(self):
        self.entries: dict[int, Entry] = {}
        self.done: set[int] = set()
        self.minute = 0

    def submit(self, pk, lab, urgent=False):
        self.minute += 1
        # As dispatch.new_turn: the highest turn started (finished ones included), urgent left out.
        served = max((e.turn for e in self.entries.values() if e.started and not e.urgent), default=0)
        lab_last = max((e.turn for e in self.entries.values() if e.lab == lab), default=0)
        self.entries[pk] = Entry(pk, lab, urgent, False, T0 + timedelta(minutes=self.minute),
                                 turn=turn_after(served, lab_last))

    def start_next(self):
        """The first waiting prediction starts (the dispatcher's next one)."""
        self.minute += 1
        first = next(e for e in run_order(list(self.active())) if not e.started)
        self.entries[first.pk] = Entry(first.pk, first.lab, first.urgent, True, first.created_at,
                                       T0 + timedelta(minutes=self.minute), first.turn)
        return first.pk

    def finish(self, pk):
        self.done.add(pk)

    def active(self):
        return [e for e in self.entries.values() if e.pk not in self.done]

    def order(self):
        return [e.pk for e in run_order(self.active())]


def test_one_lab_runs_in_submit_order():
    q = Queue()
    for pk in (1, 2, 3):
        q.submit(pk, lab=1)
    assert q.order() == [1, 2, 3]


def test_started_work_comes_first_then_urgent_then_normal():
    q = Queue()
    q.submit(1, lab=1)
    q.start_next()
    q.submit(2, lab=1)
    q.submit(3, lab=1, urgent=True)
    q.submit(4, lab=2)
    assert q.order() == [1, 3, 4, 2]


def test_a_lab_with_many_waiting_does_not_starve_another():
    # Lab 1 queued 200 predictions; lab 2 submits one afterwards: it runs second, not 201st.
    q = Queue()
    for pk in range(1, 201):
        q.submit(pk, lab=1)
    q.submit(500, lab=2)
    assert q.order()[:4] == [1, 500, 2, 3]


def test_a_lab_coming_later_joins_the_round_being_served():
    # Lab 1's first 50 have started: lab 2 joins the round being served (it had no turn in it),
    # then lab 1 and lab 2 alternate; not after the 150 still waiting.
    q = Queue()
    for pk in range(1, 201):
        q.submit(pk, lab=1)
    started = [q.start_next() for _ in range(50)]
    for pk in started:
        q.finish(pk)
    q.submit(500, lab=2)
    q.submit(501, lab=2)
    assert q.order()[:4] == [500, 51, 501, 52]


def test_urgent_goes_ahead_of_waiting_normal_work_but_not_of_started_work():
    q = Queue()
    q.submit(1, lab=1)
    q.start_next()
    q.submit(2, lab=2)
    q.submit(3, lab=2, urgent=True)
    assert q.order() == [1, 3, 2]


def test_urgent_work_starting_does_not_push_other_labs_back():
    # Lab 1 has 100 waiting and starts an urgent one: lab 2's next submit still comes in the
    # next round.
    q = Queue()
    for pk in range(1, 101):
        q.submit(pk, lab=1)
    q.submit(200, lab=1, urgent=True)
    assert q.start_next() == 200
    q.submit(300, lab=2)
    assert q.order()[:3] == [200, 1, 300]


def test_work_ending_never_reorders_the_waiting_predictions():
    # Two labs with work waiting: as predictions start and end, the waiting ones keep the order
    # they were shown in (the dashboard's order is the order run).
    q = Queue()
    for pk, lab in [(1, 1), (2, 1), (3, 2), (4, 1), (5, 2), (6, 2), (7, 1)]:
        q.submit(pk, lab)
    shown = q.order()
    while any(not e.started for e in q.active()):
        pk = q.start_next()
        assert [p for p in q.order() if p in shown] == [p for p in shown if p in q.order()]
        q.finish(pk)
    assert shown == [1, 3, 2, 5, 4, 6, 7]


def test_the_dispatchers_database_order_is_the_policys_order(db, pipeline_rows, experiment, lab_b):
    """dispatch._queue_in_run_order sorts in the database what run_order sorts in Python."""
    import random

    from django.utils import timezone

    from predictions import dispatch
    from predictions.models import Prediction, Status
    from tests.factories import ExperimentFactory

    rng = random.Random(7)
    other = ExperimentFactory(lab=lab_b)
    now = timezone.now()
    for _ in range(120):
        started = rng.random() < 0.2
        created = now - timedelta(minutes=rng.randrange(30))            # equal times happen
        row = Prediction.objects.create(
            experiment=rng.choice([experiment, other]), pipeline=pipeline_rows["ihc-dab"], params={},
            priority=rng.choice(["normal", "normal", "urgent"]), turn=rng.randrange(1, 6),
            status=Status.RUNNING if started else rng.choice([Status.QUEUED, Status.QUEUED, Status.SUCCEEDED]))
        # created_at is set on create whatever is given: spread the times afterwards.
        Prediction.objects.filter(pk=row.pk).update(
            created_at=created, started_at=created + timedelta(minutes=rng.randrange(3)) if started else None)
    expected = [e.pk for e, _ in dispatch.active_in_run_order("cpu")]
    assert len(expected) > 50
    assert list(dispatch._queue_in_run_order("cpu")) == expected
    assert list(dispatch._queue_in_run_order("gpu")) == []
