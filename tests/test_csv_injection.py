"""CSV exports never carry a live spreadsheet formula: a cell that a spreadsheet would run
(leading =, +, -, @, tab, CR) is written as text, in every CSV the app writes."""

import csv
import io

import pytest

from histoia.spreadsheet import csv_writer, dict_writer, safe_cell
from predictions.models import Status
from tests.conftest import token_client
from tests.factories import PredictionFactory, SlideFactory, SlideRunFactory

HOSTILE = "=SUM(1+1)*cmd|' /C calc'!A0.png"


@pytest.mark.parametrize("text", ["=1+1", "+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_a_cell_a_spreadsheet_would_run_is_written_as_text(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["slide 1.svs", "", "a=b", -1.5, 0, 3, None])
def test_other_cells_and_numbers_are_written_as_they_are(value):
    assert safe_cell(value) == value


def test_both_writers_make_every_text_cell_safe():
    out = io.StringIO()
    csv_writer(out).writerows([["name", "value"], [HOSTILE, -0.5]])
    writer = dict_writer(out, ["tile", "class"])
    writer.writeheader()
    writer.writerow({"tile": 1, "class": "@class"})
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows == [["name", "value"], ["'" + HOSTILE, "-0.5"], ["tile", "class"], ["1", "'@class"]]


@pytest.mark.django_db
def test_the_figures_csv_of_page_and_api_shows_a_hostile_slide_name_as_text(client):
    prediction = PredictionFactory(status=Status.SUCCEEDED)
    slide = SlideFactory(experiment=prediction.experiment, source=None, original_name=HOSTILE,
                         status="ready", width=1000, height=1000, mpp=0.5)
    SlideRunFactory(prediction=prediction, slide=slide, metrics={"tissue_area_mm2": 0.25, "tissue_fraction": -0.0})
    member = prediction.experiment.created_by
    client.force_login(member)
    for response in (client.get(f"/predictions/{prediction.pk}/figures.csv"),
                     token_client(member).get(f"/api/v1/predictions/{prediction.pk}/results.csv")):
        assert response.status_code == 200
        rows = list(csv.reader(io.StringIO(b"".join(response).decode() if response.streaming
                                           else response.content.decode())))
        assert rows[1][0] == "'" + HOSTILE
        assert rows[0][4:] == ["tissue_area_mm2", "tissue_fraction"] and rows[1][4] == "0.25"
