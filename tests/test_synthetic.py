"""The synthetic validation set: its truth must describe the pixels it generates.

No database, no Django: predictions/imaging/synthetic.py is plain numpy. Pixels are checked by
unmixing them again with the stain vectors they were made with (synthetic.unmix), never with the
analysis code the set is meant to validate.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import openslide
import pytest
from scipy import ndimage

from experiments.slide_files import SlideReader
from predictions.imaging import synthetic as syn

H = syn.STAIN_VECTORS["hematoxylin"]
DAB = syn.STAIN_VECTORS["dab"]


@functools.cache
def case(name: str, seed: int = 0) -> syn.Case:
    return syn.make_case(name, seed)


def hema_conc(c: syn.Case) -> np.ndarray:
    h_vec = np.asarray(c.truth["hematoxylin_vector"] or H)
    return syn.unmix(c.rgb, [h_vec, np.asarray(c.truth["eosin_vector"])])[..., 0]


def test_stain_vectors_are_unit_and_variants_within_bounds():
    for name, v in syn.STAIN_VECTORS.items():
        assert np.linalg.norm(v) == pytest.approx(1.0), name
    assert len(syn.EOSIN_VARIANTS) == 3
    np.testing.assert_allclose(syn.EOSIN_VARIANTS[0], syn.STAIN_VECTORS["eosin"])
    for e in syn.EOSIN_VARIANTS[1:]:
        assert np.linalg.norm(e) == pytest.approx(1.0)
        assert 10 <= syn.angle_deg(e, syn.EOSIN_VARIANTS[0]) <= 26
        assert syn.angle_deg(e, DAB) >= 35
    assert 5 <= syn.angle_deg(syn.STAIN_VECTORS["hematoxylin_variant"], H) <= 8
    assert 6 <= syn.angle_deg(syn.STAIN_VECTORS["dab_variant"], DAB) <= 10


def test_beer_lambert_physics():
    conc = {"hematoxylin": np.full((4, 4), 0.5, np.float32), "eosin": np.zeros((4, 4), np.float32)}
    rgb = syn.beer_lambert(conc, {"hematoxylin": H * 3, "eosin": syn.STAIN_VECTORS["eosin"]}, noise=0)
    expected = np.rint(np.array((243, 241, 245)) * 10 ** (-0.5 * H))   # vectors are normalised
    assert (rgb == expected.astype(np.uint8)).all()
    glass = syn.beer_lambert({"dab": np.zeros((200, 200))}, {"dab": DAB}, rng=np.random.default_rng(1))
    assert abs(glass.reshape(-1, 3).mean(axis=0) - (243, 241, 245)).max() < 0.1
    assert 1.2 < glass[..., 0].std() < 1.8


def _components(c: syn.Case, threshold: float = 0.3):
    labels, n = ndimage.label(hema_conc(c) > threshold)
    return labels, n


@pytest.mark.parametrize("name", ["nuclei_sparse", "nuclei_dense", "he_e1", "he_e2"])
def test_nuclei_count_area_and_centroids_match_pixels(name):
    c = case(name)
    truth = c.truth
    labels, n = _components(c)
    assert n == truth["nuclei_count"]
    px_area = (labels > 0).sum() * c.mpp**2
    true_area = sum(n_["area_um2"] for n_ in truth["nuclei"])
    assert px_area == pytest.approx(true_area, rel=0.05)
    centroids = np.array(ndimage.center_of_mass(labels > 0, labels, range(1, n + 1)))[:, ::-1]
    for nucleus in truth["nuclei"]:
        assert 25 <= nucleus["area_um2"] <= 90
        assert np.hypot(*(centroids - (nucleus["x"], nucleus["y"])).T).min() < 1.0


def test_touching_pairs_overlap_and_count_as_two():
    c = case("nuclei_touching")
    t = c.truth
    assert len(t["touching_pairs"]) == 10 and t["nuclei_count"] == 30 + 2 * 10
    _, n = _components(c)
    assert n == 30 + 10          # each pair is one blob of pixels, truth still counts it twice
    for pair in t["touching_pairs"]:
        a, b = t["nuclei"][pair["a"]], t["nuclei"][pair["b"]]
        assert 45 <= a["area_um2"] <= 55 and 45 <= b["area_um2"] <= 55
        radii = math.sqrt(a["area_um2"] / math.pi) + math.sqrt(b["area_um2"] / math.pi)
        distance_um = math.hypot(a["x"] - b["x"], a["y"] - b["y"]) * c.mpp
        assert distance_um == pytest.approx(pair["distance_um"], abs=0.01)
        assert 0.85 * radii - 0.01 <= pair["distance_um"] <= 0.95 * radii + 0.01


@pytest.mark.parametrize("index", [0, 1, 2])
def test_eosin_only_has_no_hematoxylin(index):
    c = case(f"eosin_only_e{index}")
    assert c.truth["nuclei_count"] == 0 and c.kind == "eosin_only"
    np.testing.assert_allclose(c.truth["eosin_vector"], syn.EOSIN_VARIANTS[index], atol=1e-6)
    conc = syn.unmix(c.rgb, [H, syn.EOSIN_VARIANTS[index]])
    hema, eosin = conc[..., 0], conc[..., 1]
    assert abs(float(hema.mean())) < 0.005 and float(np.abs(hema).max()) < 0.1
    assert (hema > 0.3).sum() == 0
    assert 0.14 < np.percentile(eosin, 1) and np.percentile(eosin, 99) < 0.46


def _dab(c: syn.Case) -> tuple[np.ndarray, np.ndarray]:
    conc = syn.unmix(c.rgb, [H, np.asarray(c.truth["dab_vector"])])
    od = -np.log10(np.maximum(c.rgb, 1) / np.array(syn.DEFAULT_WHITE, np.float32))
    tissue = np.linalg.norm(od, axis=2) > 0.04
    return conc[..., 1], tissue


@pytest.mark.parametrize("name, target", [("hdab_0", 0.0), ("hdab_10", 0.10), ("hdab_50", 0.50)])
def test_dab_fraction_recomputed_from_pixels(name, target):
    c = case(name)
    t = c.truth
    dab, tissue = _dab(c)
    assert tissue.sum() == pytest.approx(t["tissue_area_px"], rel=1e-3)
    assert t["tissue_area_px"] < 1024 * 1024 * 0.9           # a glass margin
    assert abs(t["dab_positive_fraction"] - target) <= 0.002
    measured = ((dab > 0.15) & tissue).sum() / tissue.sum()
    assert measured == pytest.approx(target, abs=0.005)
    d = dab[tissue]
    for key, lo, hi in (("weak", 0.2, 0.4), ("moderate", 0.4, 0.6), ("strong", 0.6, 99)):
        measured_bin = ((d >= lo) & (d < hi)).sum() / tissue.sum()
        assert measured_bin == pytest.approx(t[f"dab_{key}_fraction"], abs=0.005)
        if target:
            assert t[f"dab_{key}_fraction"] > 0.1 * target    # every bin populated
    assert t["dab_weak_fraction"] + t["dab_moderate_fraction"] + t["dab_strong_fraction"] == pytest.approx(
        t["dab_positive_fraction"], abs=1e-5)


def test_dab_variant_tile_uses_the_rotated_vector():
    c = case("hdab_10_dabvariant")
    np.testing.assert_allclose(c.truth["dab_vector"], syn.STAIN_VECTORS["dab_variant"], atol=1e-6)
    dab, tissue = _dab(c)
    assert ((dab > 0.15) & tissue).sum() / tissue.sum() == pytest.approx(0.10, abs=0.005)


def test_tissue_slide_truth():
    c = case("tissue_fragments")
    t = c.truth
    assert c.rgb.shape == (4000, 6000, 3)
    assert t["pieces"] == t["large_pieces"] + 1 and 2 <= t["large_pieces"] <= 3
    rgb = c.rgb
    conc = syn.unmix(rgb, [H, syn.STAIN_VECTORS["eosin"]])
    tissue = conc[..., 1] > 0.08                     # eosin 0.15..0.45 in tissue only
    pen = t["pen_mark"]
    pen_box = (slice(pen["y"], pen["y"] + pen["h"]), slice(pen["x"], pen["x"] + pen["w"]))
    assert not tissue[pen_box].any()                 # the pen mark is not tissue
    green = rgb[pen_box][..., 1].astype(int) - rgb[pen_box][..., 0]
    assert (green > 60).sum() > 1500 * 30
    assert tissue.sum() == pytest.approx(t["tissue_area_px"], rel=0.002)
    assert t["tissue_area_um2"] == pytest.approx(t["tissue_area_px"] * c.mpp**2)
    f = t["fragment"]
    assert 3000 <= f["area_px"] <= 4000
    grown = tissue[f["y"] - 200 : f["y"] + f["h"] + 200, f["x"] - 200 : f["x"] + f["w"] + 200]
    assert grown.sum() == pytest.approx(f["area_px"], rel=0.01)   # alone in its neighbourhood
    box = tissue[f["y"] : f["y"] + f["h"], f["x"] : f["x"] + f["w"]]
    assert box.sum() == pytest.approx(f["area_px"], rel=0.01)
    _, n = ndimage.label(tissue[::4, ::4])
    assert n == t["pieces"]
    # dust: dark, grey specks on glass
    dark = (rgb[..., 1] < 200) & (rgb[..., 2] < 200) & ~tissue
    dark[pen_box] = False
    _, specks = ndimage.label(dark)
    assert specks == t["dust_specks"]


def test_written_slide_is_lossless_and_has_mpp(tmp_path):
    c = case("hdab_10")
    path = syn.write_slide(tmp_path / "hdab_10.svs", c.rgb, c.mpp)
    assert path.suffix == ".tiff" and path.exists()
    with openslide.OpenSlide(str(path)) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        assert slide.dimensions == (1024, 1024) and slide.level_count == 2
        region = np.asarray(slide.read_region((100, 300), 0, (700, 500)))
        assert (region[..., 3] == 255).all()
        assert (region[..., :3] == c.rgb[300:800, 100:800]).all()
    reader = SlideReader(path)
    assert reader.info.mpp == pytest.approx(0.5)
    assert (reader.read_region((0, 0), 0, (1024, 1024)) == c.rgb).all()
    nompp = syn.write_slide(tmp_path / "plain.tif", c.rgb[:300, :400], None)
    assert SlideReader(nompp).info.mpp is None


def test_validation_set_folder(tmp_path, monkeypatch):
    assert syn.case_names(fast=True) == ["nuclei_sparse", "nuclei_touching", "eosin_only_e0", "he_e1",
                                         "hdab_0", "hdab_10", "hdab_50", "tissue_fragments"]
    assert set(syn.case_names(fast=True)) < set(syn.case_names())
    monkeypatch.setattr(syn, "case_names", lambda fast=False: ["nuclei_sparse", "eosin_only_e0"])
    written = syn.write_validation_set(tmp_path, fast=True)
    doc = json.loads((tmp_path / "truth.json").read_text())
    assert [e["name"] for e in doc["cases"]] == ["nuclei_sparse", "eosin_only_e0"]
    for (path, c), entry in zip(written, doc["cases"]):
        assert (tmp_path / entry["file"]) == path and entry["kind"] == c.kind and entry["mpp"] == 0.5
        assert entry["truth"] == json.loads(json.dumps(c.truth))
        assert (c.rgb == case(c.name).rgb).all()            # fast or not, a name gives one image


def test_generation_is_deterministic():
    a = syn.make_case("nuclei_touching", seed=0)
    assert (a.rgb == case("nuclei_touching").rgb).all() and a.truth == case("nuclei_touching").truth
    b = syn.make_case("nuclei_touching", seed=1)
    assert not (a.rgb == b.rgb).all() and a.truth != b.truth
