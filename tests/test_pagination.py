"""Numbered pages of the history and of the API's lists: the same rows on every page as plain
OFFSET paging gives, the far pages read from the other end (histoia/pagination.py)."""

from datetime import timedelta

import pytest
from django.core.paginator import Paginator
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from histoia.pagination import EitherEndPaginator
from predictions.models import Prediction
from tests.factories import PredictionFactory


@pytest.fixture
def history(experiment):
    """23 predictions, several created at the same moment, so that only the id orders them."""
    predictions = PredictionFactory.create_batch(23, experiment=experiment)
    start = timezone.now() - timedelta(days=1)
    for i, prediction in enumerate(predictions):
        Prediction.objects.filter(pk=prediction.pk).update(created_at=start + timedelta(minutes=i // 4))
    return Prediction.objects.order_by("-created_at", "-pk")


def pages(paginator):
    return [[p.pk for p in paginator.page(n)] for n in paginator.page_range]


@pytest.mark.parametrize("per_page, orphans", [(5, 0), (5, 2), (4, 0), (23, 0), (50, 0)])
def test_every_page_holds_the_rows_of_plain_offset_paging(history, per_page, orphans):
    expected = pages(Paginator(history, per_page, orphans=orphans))
    assert pages(EitherEndPaginator(history, per_page, orphans=orphans)) == expected
    assert sorted(pk for page in expected for pk in page) == sorted(history.values_list("pk", flat=True))


def test_the_last_page_is_read_from_the_other_end(history):
    paginator = EitherEndPaginator(history, 5)
    with CaptureQueriesContext(connection) as first:
        list(paginator.page(1))
    with CaptureQueriesContext(connection) as last:
        rows = list(paginator.page(paginator.num_pages))
    assert [p.pk for p in rows] == list(history.values_list("pk", flat=True))[20:]
    assert "OFFSET" not in first[-1]["sql"] and "OFFSET" not in last[-1]["sql"]   # both read from an end
    assert "ASC" in last[-1]["sql"] and "DESC" in first[-1]["sql"]


def test_an_order_not_ending_with_the_id_is_paged_as_usual(history):
    by_time_only = Prediction.objects.order_by("-created_at")
    paginator = EitherEndPaginator(by_time_only, 5)
    with CaptureQueriesContext(connection) as last:
        list(paginator.page(paginator.num_pages))
    assert "OFFSET 20" in last[-1]["sql"]   # ties in the order: reversing could change the rows


def test_the_history_page_and_the_api_show_the_oldest_predictions_last(history, experiment, alice_client,
                                                                       alice_api):
    PredictionFactory.create_batch(37, experiment=experiment)   # 60: two pages of the history's 50
    newest_first = list(history.values_list("pk", flat=True))

    first = alice_client.get("/predictions/")
    assert first.status_code == 200 and "page 1 of 2 · 60 predictions" in first.content.decode()
    assert 'href="?&page=2">oldest »' in first.content.decode()
    last = alice_client.get("/predictions/?page=2")
    assert [p.pk for p in last.context["page"]] == newest_first[50:]

    answer = alice_api.get("/api/v1/predictions/?page_size=25&page=3").json()
    assert [row["id"] for row in answer["results"]] == newest_first[50:]
    assert [row["id"] for row in alice_api.get("/api/v1/predictions/?page_size=25").json()["results"]] == \
        newest_first[:25]
