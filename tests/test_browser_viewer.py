"""The slide viewer in a real browser: from a finished prediction, open the slide in the viewer,
zoom in to full resolution, read a tile's value, toggle and fade the overlay, and take a
screenshot. A member of another lab gets 404 on the same tiles."""


import pytest
from django.urls import reverse
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from experiments import deepzoom
from predictions import engine
from tests.browser import js, viewer_browser, click_through, log_in, screenshot, wait_in_page
from tests.conftest import CMU_SLIDE, wait_final

pytestmark = pytest.mark.worker


browser = pytest.fixture(viewer_browser, name="browser")


def status_of(browser, url):
    return js(browser, "const r = new XMLHttpRequest(); r.open('GET', arguments[0], false); r.send(); return r.status;", url)


def fully_loaded(browser):
    return js(browser, "const v = window.histoiaViewer && window.histoiaViewer.viewer;"
                       "return !!v && v.world.getItemCount() > 0 && v.world.getItemAt(0).getFullyLoaded();")


def test_viewer_zoom_overlay_and_tile_value(workers, pipelines, make_slide, live_server, browser, alice, bob):
    slide = make_slide(CMU_SLIDE)
    prediction = wait_final(engine.submit(slide.experiment, pipelines["ihc-dab"], [slide], {"tile_size": 256}, user=alice))
    assert prediction.status == "succeeded", prediction.error
    run = prediction.runs.get()
    levels = deepzoom.pyramid(slide.file.path).level_count

    log_in(browser, live_server, "alice")
    browser.get(f"{live_server.url}{prediction.get_absolute_url()}")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"figure[data-run='{run.pk}'] a[data-open-viewer]"))
    assert f"/experiments/slides/{slide.pk}/viewer/?run={run.pk}" in browser.current_url
    viewer = browser.find_element(By.ID, "viewer")
    wait_in_page(lambda: viewer.get_attribute("data-ready") in ("1", "failed"), timeout=30, message="viewer open")
    assert viewer.get_attribute("data-ready") == "1"
    wait_in_page(lambda: viewer.get_attribute("data-layers-loaded") == "1", timeout=30, message="overlay image")
    wait_in_page(lambda: viewer.get_attribute("data-overlay-data") == "1", timeout=30, message="per-tile data")
    wait_in_page(lambda: fully_loaded(browser), timeout=30, message="first view loaded")
    home_zoom = js(browser, "return histoiaViewer.viewer.viewport.getZoom();")
    # The tissue outline was drawn from the mask's contours.
    assert js(browser, "return document.querySelector('.tissue-outline').getAttribute('d').length") > 100

    # Zoom in with the + button, then all the way to full resolution through the API, centred on
    # a tile that was analysed; tiles of the deepest Deep Zoom level (level 0 of the slide) load.
    browser.find_element(By.CSS_SELECTOR, "#viewer div[title='Zoom in']").click()
    wait_in_page(lambda: js(browser, "return histoiaViewer.viewer.viewport.getZoom();") > home_zoom * 1.5,
             timeout=10, message="zoom in button")
    row, col = run.plan["tiles"][len(run.plan["tiles"]) // 2]
    size0 = round(run.plan["tile_size"] * run.plan["analysis_downsample"])
    cx, cy = (col + 0.5) * size0, (row + 0.5) * size0
    # Count only what this zoom requests: the page's 250-entry resource buffer may be full by now.
    js(browser, "performance.clearResourceTimings();")
    js(browser, """
        const v = histoiaViewer.viewer, item = v.world.getItemAt(0);
        const centre = item.imageToViewportCoordinates(arguments[0], arguments[1]);
        v.viewport.panTo(centre, true);
        v.viewport.zoomTo(item.imageToViewportZoom(1.0), centre, true);""", cx, cy)
    wait_in_page(lambda: fully_loaded(browser), timeout=30, message="full-resolution tiles loaded")
    wait_in_page(lambda: js(browser, "return performance.getEntriesByType('resource').map(e => e.name)"
                                     ".filter(n => n.includes('/dzi/' + arguments[0] + '/')).length;", levels - 1) > 0,
                 timeout=30, message="tiles of the deepest level requested")

    # The value of the tile under the pointer (hover), then kept by a click.
    ActionChains(browser).move_to_element(viewer).move_by_offset(3, 3).perform()
    readout = browser.find_element(By.CSS_SELECTOR, "[data-readout]")
    wait_in_page(lambda: f"row {row}, col {col}" in readout.text, timeout=10, message="tile readout")
    assert "DAB-positive fraction of tissue" in readout.text
    ActionChains(browser).move_to_element(viewer).move_by_offset(3, 3).click().perform()
    wait_in_page(lambda: "pinned" in readout.get_attribute("class"), timeout=10, message="pinned readout")
    assert js(browser, "return histoiaViewer.lastTile && histoiaViewer.lastTile.row") == row

    # Toggle the overlay off and on, then fade it.
    layer_opacity = "return histoiaViewer.layers.positivity.getOpacity();"
    assert js(browser, layer_opacity) == pytest.approx(0.55)
    toggle = browser.find_element(By.CSS_SELECTOR, "input[data-layer-toggle=positivity]")
    toggle.click()
    assert js(browser, layer_opacity) == 0
    toggle.click()
    assert js(browser, layer_opacity) == pytest.approx(0.55)
    js(browser, "const r = document.querySelector('[data-layer-opacity]'); r.value = 70;"
                "r.dispatchEvent(new Event('input', {bubbles: true}));")
    assert js(browser, layer_opacity) == pytest.approx(0.7)

    # A view for the screenshot: zoomed in on the tissue, overlay on, a tile picked.
    js(browser, "const v = histoiaViewer.viewer; v.viewport.zoomTo(arguments[0] * 2.2, null, true);", home_zoom)
    wait_in_page(lambda: fully_loaded(browser), timeout=30, message="tiles loaded for the screenshot")
    ActionChains(browser).move_to_element(viewer).click().perform()
    screenshot(browser, "page-viewer")

    # The GeoJSON export is one click away on the page.
    href = browser.find_element(By.PARTIAL_LINK_TEXT, "Regions (GeoJSON)").get_attribute("href")
    assert status_of(browser, href) == 200

    # Another lab's member: the tiles, the descriptor and the page do not exist for them.
    tile = f"{live_server.url}{reverse('experiments:slide_tile', args=[slide.pk, levels - 1, 2, 2])}"
    assert status_of(browser, tile) == 200   # cached for alice by now
    log_in(browser, live_server, "bob")
    for url in (tile, f"{live_server.url}{reverse('experiments:slide_dzi', args=[slide.pk])}",
                f"{live_server.url}{reverse('predictions:run_overlay', args=[run.pk])}", href):
        assert status_of(browser, url) == 404, url
    browser.get(tile)
    assert "Not Found" in browser.title or "Not Found" in browser.page_source
    browser.get(f"{live_server.url}{reverse('experiments:viewer', args=[slide.pk])}")
    assert "Not Found" in browser.page_source and "openseadragon" not in browser.page_source.lower()
