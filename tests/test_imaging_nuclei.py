"""Nucleus detection on hematoxylin OD: generated nuclei of known count, place and size."""

import dataclasses

import numpy as np
import pytest

from predictions.imaging import synthetic
from predictions.imaging.nuclei import NucleusSettings, detect_nuclei, segment_nuclei
from predictions.imaging.stain import concentrations, estimate_stains, optical_density

WHITE = (243, 241, 245)


def hematoxylin(case):
    est = estimate_stains(case.rgb, WHITE)
    return concentrations(optical_density(case.rgb, est.white), est.own_matrix().astype(np.float32))[..., 0]


def settings(**kw):
    return NucleusSettings(mpp=0.5, **kw)


@pytest.mark.parametrize("name", ["nuclei_sparse", "nuclei_dense", "he_e1"])
def test_count_and_positions_of_separated_nuclei(name):
    case = synthetic.make_case(name)
    found = segment_nuclei(hematoxylin(case), settings())
    truth = np.array([[n["y"], n["x"]] for n in case.truth["nuclei"]])
    assert len(found.areas_px) == pytest.approx(case.truth["nuclei_count"], rel=0.1)
    # Every true nucleus has a detection within 2 µm of its centre.
    d = np.linalg.norm(truth[:, None, :] - found.centroids[None, :, :], axis=2).min(axis=1)
    assert np.mean(d * 0.5 <= 2.0) > 0.95


def test_touching_nuclei_are_split():
    case = synthetic.make_case("nuclei_touching")
    found = segment_nuclei(hematoxylin(case), settings())
    assert len(found.areas_px) == pytest.approx(case.truth["nuclei_count"], rel=0.1)


def test_nucleus_areas_in_um2_are_close_to_truth():
    case = synthetic.make_case("nuclei_dense")
    found = segment_nuclei(hematoxylin(case), settings())
    truth = np.median([n["area_um2"] for n in case.truth["nuclei"]])
    assert np.median(found.areas_px) * 0.25 == pytest.approx(truth, rel=0.2)


@pytest.mark.parametrize("name", ["eosin_only_e0", "eosin_only_e1", "eosin_only_e2"])
def test_no_nuclei_where_there_is_no_hematoxylin(name):
    assert len(segment_nuclei(hematoxylin(synthetic.make_case(name)), settings()).areas_px) == 0


def test_glass_has_no_nuclei():
    assert len(segment_nuclei(np.zeros((300, 300), np.float32), settings()).areas_px) == 0


def test_area_bounds_are_in_um2():
    case = synthetic.make_case("nuclei_sparse")
    h = hematoxylin(case)
    everything = len(segment_nuclei(h, settings()).areas_px)
    assert len(segment_nuclei(h, settings(min_area_um2=400)).areas_px) < everything / 4


def test_same_nuclei_at_another_pixel_size():
    """The same tissue at 1 µm/px (sizes are µm, not pixels) gives the same count."""
    case = synthetic.make_case("nuclei_sparse")
    h = hematoxylin(case)
    coarse = h.reshape(512, 2, 512, 2).mean(axis=(1, 3))
    full = len(segment_nuclei(h, settings()).areas_px)
    assert len(segment_nuclei(coarse, dataclasses.replace(settings(), mpp=1.0)).areas_px) == pytest.approx(full, rel=0.1)


def test_core_and_section_keep_only_nuclei_centred_there():
    case = synthetic.make_case("nuclei_dense")
    h = hematoxylin(case)
    everything = segment_nuclei(h, settings())
    core = (0, 0, 512, 1024)
    top = detect_nuclei(h, settings(), core=core)
    assert np.all(top.centroids[:, 0] < 512)
    assert len(top.areas_px) == int(np.sum(everything.centroids[:, 0] < 512))
    none = detect_nuclei(h, settings(), section=np.zeros(h.shape, bool))
    assert len(none.areas_px) == 0
