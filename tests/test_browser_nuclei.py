"""The viewer draws a run's nuclei as outlines in a real browser: a note asks to zoom in while the
view is wide, circles appear once zoomed in (those near the view, from detections.json), and go
away again when zoomed out. No workers: the run is built in the database on a real slide."""


import pytest
from selenium.webdriver.common.by import By

from tests.browser import js, viewer_browser, log_in, screenshot, wait_in_page
from tests.conftest import CMU_SLIDE
from tests.nuclei_runs import finished_run, random_nuclei


browser = pytest.fixture(viewer_browser, name="browser")


def test_nuclei_outlines_appear_when_zoomed_in(transactional_db, make_slide, live_server, browser, alice):
    slide = make_slide(CMU_SLIDE)
    assert slide.status == "ready", slide.error
    nuclei = random_nuclei(8000, seed=9, width=slide.width, height=slide.height)
    run = finished_run(slide.experiment, nuclei, slide=slide, mpp=slide.mpp)

    log_in(browser, live_server, "alice")
    browser.get(f"{live_server.url}/experiments/slides/{slide.pk}/viewer/?run={run.pk}")
    viewer = browser.find_element(By.ID, "viewer")
    wait_in_page(lambda: viewer.get_attribute("data-ready") in ("1", "failed"), timeout=30, message="viewer open")
    assert viewer.get_attribute("data-ready") == "1"
    wait_in_page(lambda: viewer.get_attribute("data-overlay-data") == "1", timeout=30, message="overlay data")
    # The whole slide is in view (2220 px across): no circles, a note instead.
    wait_in_page(lambda: viewer.get_attribute("data-nuclei") == "zoomed-out", timeout=10, message="zoomed-out state")
    note = browser.find_element(By.CSS_SELECTOR, "#viewer .viewer-note")
    assert note.is_displayed() and "zoom in to see nuclei" in note.text.lower()
    assert browser.find_element(By.CSS_SELECTOR, "[data-nuclei-panel]").is_displayed()

    # Full resolution, centred on the slide: the nuclei near the view are drawn.
    js(browser, """
        const v = histoiaViewer.viewer, item = v.world.getItemAt(0);
        const centre = item.imageToViewportCoordinates(arguments[0], arguments[1]);
        v.viewport.panTo(centre, true);
        v.viewport.zoomTo(item.imageToViewportZoom(1.0), centre, true);""", slide.width / 2, slide.height / 2)
    wait_in_page(lambda: viewer.get_attribute("data-nuclei") == "shown", timeout=15, message="nuclei drawn")
    circles = js(browser, "return Array.from(document.querySelectorAll('.viewer-svg .nuclei circle'),"
                          " c => [+c.getAttribute('cx'), +c.getAttribute('cy'), +c.getAttribute('r')]);")
    box = js(browser, "return histoiaViewer.nuclei.box;")
    expected = [n for n in nuclei if box["x0"] <= n[0] < box["x1"] and box["y0"] <= n[1] < box["y1"]]
    assert 50 < len(circles) == len(expected) == int(viewer.get_attribute("data-nuclei-count"))
    assert all(box["x0"] - 1 <= x <= box["x1"] + 1 and box["y0"] - 1 <= y <= box["y1"] + 1 and r >= 1
               for x, y, r in circles)
    assert not note.is_displayed()
    assert js(browser, "return getComputedStyle(document.querySelector('.viewer-svg .nuclei')).display") != "none"
    screenshot(browser, "page-viewer-nuclei")

    # Zoomed out again: hidden, and the note is back.
    js(browser, "histoiaViewer.viewer.viewport.goHome(true);")
    wait_in_page(lambda: viewer.get_attribute("data-nuclei") == "zoomed-out", timeout=10, message="hidden again")
    assert note.is_displayed()
    assert js(browser, "return getComputedStyle(document.querySelector('.viewer-svg .nuclei')).display") == "none"
