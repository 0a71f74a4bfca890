"""The run-order policy on its own: started work first, urgent next, labs take turns."""

from datetime import datetime, timedelta

from predictions.run_order import Entry, run_order

T0 = datetime(2026, 12, 1, 9, 0)


def entry(pk, lab, minute, urgent=False, started=False):
    at = T0 + timedelta(minutes=minute)
    return Entry(pk, lab, urgent, started, at, at if started else None)


def order(entries):
    return [e.pk for e in run_order(entries)]


def test_one_lab_runs_in_submit_order():
    assert order([entry(3, 1, 3), entry(1, 1, 1), entry(2, 1, 2)]) == [1, 2, 3]


def test_started_work_comes_first_then_urgent_then_normal():
    entries = [entry(1, 1, 0, started=True), entry(2, 1, 1), entry(3, 1, 2, urgent=True), entry(4, 2, 3)]
    assert order(entries) == [1, 3, 4, 2]


def test_a_lab_with_many_waiting_does_not_starve_another():
    # Lab 1 queued 200 predictions; lab 2 submits one afterwards: it runs second, not 201st.
    entries = [entry(i, 1, i) for i in range(1, 201)] + [entry(500, 2, 300)]
    assert order(entries)[:4] == [1, 500, 2, 3]


def test_labs_take_turns_counting_work_already_started():
    # Lab 1 has a prediction running: lab 2's first waiting one goes before lab 1's next.
    entries = [entry(1, 1, 0, started=True), entry(2, 1, 1), entry(3, 1, 2), entry(4, 2, 5), entry(5, 2, 6)]
    assert order(entries) == [1, 4, 2, 5, 3]


def test_urgent_goes_ahead_of_waiting_normal_work_but_not_of_started_work():
    entries = [entry(1, 1, 0, started=True), entry(2, 2, 1), entry(3, 2, 9, urgent=True)]
    assert order(entries) == [1, 3, 2]
