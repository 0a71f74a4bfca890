"""Numbered pages over long lists (the history, the API's lists) that stay fast at the far end.

A page is an OFFSET: the database walks every row before it, so the last page of a history of
100,000 predictions cost ten times its first (bench/history_10k.py). A page in the far half is
read from the other end instead, in the opposite order, and turned round: no page walks more than
half the list, and the last page costs what the first does. The rows are the same either way,
provided the order is total (it ends with the primary key); otherwise pages are read as usual.
"""

from django.core.paginator import Paginator
from django.db.models import QuerySet
from rest_framework.pagination import PageNumberPagination


def _totally_ordered(rows) -> bool:
    if not isinstance(rows, QuerySet) or not rows.query.order_by or rows.query.is_sliced:
        return False
    last = rows.query.order_by[-1]
    return isinstance(last, str) and last.lstrip("-") in ("pk", "id")


class EitherEndPaginator(Paginator):
    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        if bottom <= self.count // 2 or not _totally_ordered(self.object_list):
            return super().page(number)
        from_the_end = self.object_list.reverse()[self.count - top:self.count - bottom]
        return self._get_page(list(from_the_end)[::-1], number, self)


class Pagination(PageNumberPagination):
    """The API's pages: `?page=N`, and `?page_size=` up to 200 (25 by default)."""

    django_paginator_class = EitherEndPaginator
    page_size_query_param = "page_size"
    max_page_size = 200
