"""CSV files a spreadsheet opens safely.

A cell that starts with =, +, -, @, a tab or a carriage return is run as a formula by Excel,
LibreOffice and Google Sheets ("CSV injection"): a slide named `=HYPERLINK(...)` would become a
live formula in every figures table that lists it. Such text cells get a leading apostrophe,
which spreadsheets show as text and which a reader of the raw file recognises; numbers (negative
ones too) are written as they are. Every CSV the app writes goes through csv_writer() or
dict_writer().
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _SafeWriter:
    def __init__(self, writer):
        self._writer = writer

    def writerow(self, row: Iterable[Any]):
        return self._writer.writerow([safe_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]):
        for row in rows:
            self.writerow(row)


class _SafeDictWriter:
    def __init__(self, writer: csv.DictWriter):
        self._writer = writer

    def writeheader(self):
        return self._writer.writeheader()

    def writerow(self, row: dict):
        return self._writer.writerow({k: safe_cell(v) for k, v in row.items()})

    def writerows(self, rows: Iterable[dict]):
        for row in rows:
            self.writerow(row)


def csv_writer(out, **kwargs) -> _SafeWriter:
    """csv.writer(out), every text cell made safe."""
    return _SafeWriter(csv.writer(out, **kwargs))


def dict_writer(out, fieldnames, **kwargs) -> _SafeDictWriter:
    """csv.DictWriter(out, fieldnames), every text cell made safe."""
    return _SafeDictWriter(csv.DictWriter(out, fieldnames=fieldnames, **kwargs))
