"""A worker keeps the slide of its last tile batch open, and reopens it when the file changed."""

import os

import pytest

from experiments.slide_files import SlideFileError
from predictions import engine
from tests.conftest import BROKEN_SLIDE, CMU_SLIDE


@pytest.fixture(autouse=True)
def nothing_kept():
    engine.forget_kept()
    yield
    engine.forget_kept()


def test_consecutive_batches_share_one_open_slide_until_the_file_changes(slide_copy):
    path = slide_copy(CMU_SLIDE, "case.svs")
    with engine.kept_open(str(path)) as first:
        region = first.read_region((0, 0), 0, (64, 64))
    with engine.kept_open(str(path)) as second:
        assert second is first
        assert (second.read_region((0, 0), 0, (64, 64)) == region).all()
    os.utime(path, ns=(1, 1))  # the stored file was replaced
    with engine.kept_open(str(path)) as third:
        assert third is not first and third.info.width == 2220


def test_a_failed_read_forgets_the_slide_and_a_missing_file_says_so(slide_copy, tmp_path):
    path = slide_copy(CMU_SLIDE, "case.svs")
    with pytest.raises(RuntimeError):
        with engine.kept_open(str(path)) as reader:
            raise RuntimeError("the batch failed")
    with engine.kept_open(str(path)) as again:
        assert again is not reader
    with pytest.raises(SlideFileError, match="missing from storage"):
        with engine.kept_open(str(tmp_path / "gone.svs")):
            pass
    with pytest.raises(SlideFileError):
        with engine.kept_open(str(BROKEN_SLIDE)):
            pass
