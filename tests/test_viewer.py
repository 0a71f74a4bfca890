"""The slide viewer's page, Deep Zoom descriptor and tiles: right size, real JPEGs, a disk cache
that gives back the same bytes, and nothing at all for a member of another lab."""

import io
import json
import xml.etree.ElementTree as ET

import pytest
from django.urls import reverse
from PIL import Image

from experiments import deepzoom, viewer
from tests.conftest import CMU_SLIDE

DZ = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture
def cmu(make_slide):
    slide = make_slide(CMU_SLIDE)
    assert slide.status == "ready", slide.error
    return slide


@pytest.fixture
def tile_cache(settings, tmp_path):
    settings.VIEWER_TILE_CACHE_DIR = str(tmp_path / "tiles")
    return tmp_path / "tiles"


def dzi(client, slide):
    response = client.get(reverse("experiments:slide_dzi", args=[slide.pk]))
    assert response.status_code == 200
    return ET.fromstring(response.content)


def tile_url(slide, level, col, row):
    return reverse("experiments:slide_tile", args=[slide.pk, level, col, row])


def test_dzi_describes_the_whole_slide_at_level_0(alice_client, cmu):
    root = dzi(alice_client, cmu)
    size = root.find(f"{DZ}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (2220, 2967) == (cmu.width, cmu.height)
    assert root.get("Format") == "jpeg"
    assert int(root.get("TileSize")) == deepzoom.TILE_SIZE and int(root.get("Overlap")) == deepzoom.OVERLAP
    # OpenSeadragon reads the tiles from here (the descriptor's Url attribute).
    assert root.get("Url") == f"/experiments/slides/{cmu.pk}/dzi/"


def test_a_tile_is_a_jpeg_of_the_right_size(alice_client, cmu, tile_cache):
    # The deepest level is level 0 of the slide: 2220 px wide in tiles of 254 (+1 px overlap).
    levels = deepzoom.pyramid(cmu.file.path).level_count
    response = alice_client.get(tile_url(cmu, levels - 1, 1, 2))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert "private" in response["Cache-Control"] and "public" not in response["Cache-Control"]
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.mode == "RGB"
    assert image.size == (deepzoom.TILE_SIZE + 2, deepzoom.TILE_SIZE + 2)  # inner tile: overlap both sides
    # The last column is narrower: 2220 - 8 * 254 = 188 px, plus the overlap on its left.
    last = Image.open(io.BytesIO(alice_client.get(tile_url(cmu, levels - 1, 8, 0)).content))
    assert last.size == (2220 - 8 * 254 + 1, deepzoom.TILE_SIZE + 1)
    # The one-tile top level holds the whole slide.
    top = Image.open(io.BytesIO(alice_client.get(tile_url(cmu, 0, 0, 0)).content))
    assert top.size == (1, 1)
    assert alice_client.get(tile_url(cmu, levels - 1, 9, 0)).status_code == 404   # past the edge
    assert alice_client.get(tile_url(cmu, levels, 0, 0)).status_code == 404       # no such level


def test_cached_tile_returns_identical_bytes(alice_client, cmu, tile_cache):
    levels = deepzoom.pyramid(cmu.file.path).level_count
    url = tile_url(cmu, levels - 2, 1, 1)
    first = alice_client.get(url)
    cached = list(tile_cache.rglob("*.jpeg"))
    assert len(cached) == 1 and cmu.sha256 in str(cached[0])
    written = cached[0].stat().st_mtime_ns
    deepzoom.clear_open()  # a cache hit must not need the slide open
    second = alice_client.get(url)
    assert second.content == first.content
    assert cached[0].stat().st_mtime_ns == written   # served from the cache, not made again
    assert second["ETag"] == first["ETag"]
    # The browser's revalidation costs nothing.
    assert alice_client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 304
    # A user learns nothing from cache status or timing headers; staff see both (devtools, bench).
    assert "X-Tile-Cache" not in second and "Server-Timing" not in second


def test_staff_see_the_cache_status_and_the_time_in_the_view(client, lab_a, cmu, tile_cache):
    from tests.factories import MemberFactory

    client.force_login(MemberFactory(lab=lab_a, is_staff=True))
    url = tile_url(cmu, deepzoom.pyramid(cmu.file.path).level_count - 1, 0, 0)
    first, second = client.get(url), client.get(url)
    assert (first["X-Tile-Cache"], second["X-Tile-Cache"]) == ("miss", "hit")
    assert second["Server-Timing"].startswith("tile;dur=")


def test_two_labs_with_the_same_file_never_share_cached_tiles(alice_client, bob_client, bob, cmu, make_slide,
                                                              tile_cache):
    from tests.factories import ExperimentFactory

    bobs = make_slide(CMU_SLIDE, exp=ExperimentFactory(lab=bob.labs.get(), created_by=bob))
    assert bobs.sha256 == cmu.sha256
    level = deepzoom.pyramid(cmu.file.path).level_count - 1
    assert alice_client.get(tile_url(cmu, level, 0, 0)).status_code == 200
    assert bob_client.get(tile_url(bobs, level, 0, 0)).status_code == 200
    # Bob's tile was made from his own slide, not served from alice's cached one.
    assert len(list(tile_cache.rglob("*.jpeg"))) == 2


def test_another_lab_gets_404_on_page_dzi_and_tiles(alice_client, bob_client, cmu, tile_cache):
    levels = deepzoom.pyramid(cmu.file.path).level_count
    url = tile_url(cmu, levels - 1, 0, 0)
    assert alice_client.get(url).status_code == 200   # now cached: bob must still get nothing
    for target in (reverse("experiments:viewer", args=[cmu.pk]),
                   reverse("experiments:slide_dzi", args=[cmu.pk]), url, tile_url(cmu, levels - 1, 1, 0)):
        response = bob_client.get(target)
        assert response.status_code == 404, target
        assert b"\xff\xd8" not in response.content[:2]
    # Not logged in: sent to the login page, never a tile.
    from django.test import Client

    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


def test_viewer_page_loads_openseadragon_from_our_static_files(alice_client, cmu):
    response = alice_client.get(reverse("experiments:viewer", args=[cmu.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "vendor/openseadragon/openseadragon.min.js" in html
    assert "cdn" not in html.lower() and "//unpkg" not in html and "jsdelivr" not in html
    assert f'/experiments/slides/{cmu.pk}/slide.dzi' in html
    assert "No finished prediction on this slide yet" in html


def test_viewer_page_says_how_to_enable_it_without_openseadragon(alice_client, cmu, monkeypatch):
    monkeypatch.setattr(viewer, "openseadragon_available", lambda: False)
    response = alice_client.get(reverse("experiments:viewer", args=[cmu.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "make static-vendor" in html and "npm" in html
    assert "openseadragon.min.js" not in html


def test_experiment_page_links_ready_slides_to_the_viewer(alice_client, cmu):
    html = alice_client.get(reverse("experiments:detail", args=[cmu.experiment_id])).content.decode()
    assert reverse("experiments:viewer", args=[cmu.pk]) in html


def test_plain_png_slide_is_tiled_too(alice_client, make_slide, tmp_path, tile_cache):
    from skimage import data

    path = tmp_path / "ihc.png"
    Image.fromarray(data.immunohistochemistry()).save(path)   # 512 x 512, OpenSlide cannot open it
    slide = make_slide(path)
    assert slide.status == "ready"
    root = dzi(alice_client, slide)
    size = root.find(f"{DZ}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (512, 512)
    levels = deepzoom.pyramid(slide.file.path).level_count
    response = alice_client.get(tile_url(slide, levels - 1, 0, 0))
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (255, 255)


def test_pending_or_invalid_slides_have_no_tiles(alice_client, experiment):
    from experiments.models import Slide

    slide = Slide.objects.create(experiment=experiment, original_name="waiting.svs")
    assert alice_client.get(reverse("experiments:slide_dzi", args=[slide.pk])).status_code == 404
    assert alice_client.get(tile_url(slide, 0, 0, 0)).status_code == 404
    page = alice_client.get(reverse("experiments:viewer", args=[slide.pk]))
    assert page.status_code == 200 and "viewer opens once it has been checked" in page.content.decode()


# -- what predictions lay over a slide (a hook: experiments/viewer_layers.py) ---------------------
def viewer_page(client, slide, **params):
    response = client.get(reverse("experiments:viewer", args=[slide.pk]), params)
    assert response.status_code == 200
    html = response.content.decode()
    config = json.loads(html.split('<script id="viewer-config" type="application/json">')[1].split("</script>")[0])
    return html, config


@pytest.mark.django_db(transaction=True)
def test_a_finished_prediction_is_laid_over_its_slide(alice_client, cmu, pipelines):
    from predictions import engine

    # Two finished predictions of the slide, computed in this process (no worker needed).
    with engine.inline_steps() as steps:
        older = engine.submit(cmu.experiment, pipelines["tissue-area"], [cmu])
        newer = engine.submit(cmu.experiment, pipelines["tissue-area"], [cmu])
        steps.run()
    old_run, new_run = older.runs.get(), newer.runs.get()
    assert old_run.status == new_run.status == "succeeded" and new_run.images

    html, config = viewer_page(alice_client, cmu)
    # The newest is shown, the other one offered.
    assert f'<option value="{new_run.pk}" selected>#{newer.pk} · ' in html
    assert f'<option value="{old_run.pk}">#{older.pk} · ' in html
    assert "No finished prediction on this slide yet" not in html
    assert f'href="{reverse("predictions:detail", args=[newer.pk])}">prediction #{newer.pk}</a>' in html
    assert reverse("predictions:run_regions", args=[new_run.pk]) in html
    assert config["overlay"] == reverse("predictions:run_overlay", args=[new_run.pk])
    assert [layer["name"] for layer in config["layers"]] == list(new_run.images)
    assert all(f'data-layer-toggle="{name}"' in html for name in new_run.images)

    html, config = viewer_page(alice_client, cmu, run=old_run.pk)
    assert f'<option value="{old_run.pk}" selected>' in html
    assert config["overlay"] == reverse("predictions:run_overlay", args=[old_run.pk])


def test_without_a_layer_provider_the_viewer_shows_the_slide_alone(alice_client, cmu, monkeypatch):
    from experiments import viewer_layers

    monkeypatch.setattr(viewer_layers, "_providers", [])  # as on a server without predictions
    html, config = viewer_page(alice_client, cmu)
    assert "Nothing can be laid over this slide on this server." in html
    assert config["layers"] == [] and config["overlay"] is None
    assert f"/experiments/slides/{cmu.pk}/slide.dzi" in html
