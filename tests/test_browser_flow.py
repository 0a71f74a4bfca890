"""A lab member's whole path in a real browser: log in, create an experiment, upload the shared
slide, run tissue-area, watch the progress reach 100 % without a reload, see the overlay, and
download figures equal to those on the page. A member of another lab sees none of it."""

import csv
import io

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from predictions.pipelines.tissue_area import TissueArea
from tests.browser import chromium, click_through, log_in, quit_checking_csp, screenshot, wait_in_page
from tests.conftest import CMU_SLIDE

pytestmark = pytest.mark.worker


@pytest.fixture
def browser():
    b = chromium()
    yield b
    quit_checking_csp(b)


def test_lab_member_runs_tissue_area_and_reads_the_figures(workers, pipelines, live_server, browser, alice, bob, lab_a):
    log_in(browser, live_server, "alice")
    assert "Nothing is running" in browser.page_source  # the dashboard is the landing page
    screenshot(browser, "page-dashboard-empty")
    click_through(browser, browser.find_element(By.LINK_TEXT, "Experiments"))
    click_through(browser, browser.find_element(By.LINK_TEXT, "New experiment"))
    browser.find_element(By.NAME, "name").send_keys("Liver biopsies")
    browser.find_element(By.NAME, "description").send_keys("H&E, fibrosis staging")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    assert "Experiment “Liver biopsies” created" in browser.page_source

    browser.find_element(By.NAME, "files").send_keys(str(CMU_SLIDE))
    click_through(browser, browser.find_element(By.CSS_SELECTOR, ".add-slides button"))
    # The slide table refreshes itself until the worker has checked the slide.
    wait_in_page(lambda: "Ready" in browser.find_element(By.ID, "slides").text, timeout=60, message="slide ready")
    assert "2220 × 2967" in browser.page_source
    screenshot(browser, "page-experiment")

    click_through(browser, browser.find_element(By.LINK_TEXT, "Run a pipeline…"))
    Select(browser.find_element(By.NAME, "pipeline")).select_by_visible_text(f"Tissue area (tissue-area {TissueArea.version})")
    wait_in_page(lambda: "Otsu" in browser.page_source, message="pipeline description")
    screenshot(browser, "page-run-pipeline")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "button[name=submit]"))

    # Mark the document: if the page reloaded, the mark would be gone.
    browser.execute_script("window.__sameDocument = true;")
    bar = lambda: browser.find_element(By.CSS_SELECTOR, "[aria-label='overall progress']").get_attribute("aria-valuenow")
    wait_in_page(lambda: bar() == "100", timeout=120, message="progress bar at 100 %")
    wait_in_page(lambda: browser.find_element(By.CSS_SELECTOR, "[data-status]").get_attribute("data-status") == "succeeded",
             timeout=30, message="succeeded")
    assert browser.execute_script("return window.__sameDocument === true;")
    prediction_url = browser.current_url

    overlay = wait_in_page(lambda: browser.find_elements(By.CSS_SELECTOR, "img.layer[data-layer=tissue_mask]"),
                       message="overlay")[0]
    wait_in_page(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", overlay),
             message="overlay image loaded")
    # The overlay controls work: hide, show, and fade the layer.
    toggle = browser.find_element(By.CSS_SELECTOR, "input[data-toggle=tissue_mask]")
    toggle.click()
    assert browser.execute_script("return arguments[0].hidden", overlay) is True
    toggle.click()
    browser.execute_script("const r = document.querySelector('[data-opacity]'); r.value = 20;"
                           "r.dispatchEvent(new Event('input', {bubbles: true}));")
    assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.2)
    screenshot(browser, "page-prediction")

    page = {th.get_attribute("title"): td.text for th, td in zip(
        browser.find_elements(By.CSS_SELECTOR, "table.figures thead th.num"),
        browser.find_elements(By.CSS_SELECTOR, "table.figures tbody tr:first-child td.num"))}
    csv_text = browser.execute_script(
        "const link = [...document.querySelectorAll('a')].find(a => a.textContent.includes('Download figures'));"
        "const r = new XMLHttpRequest(); r.open('GET', link.href, false); r.send(); return r.responseText;")
    (row,) = list(csv.DictReader(io.StringIO(csv_text)))
    assert row["slide"] == "cmu-1-small-region.svs" and row["status"] == "succeeded"
    area = float(row["tissue_area_mm2"])
    assert 0.3 < area < 1.2
    assert page["tissue_area_mm2"] == f"{area:.4g}"
    assert page["tissue_fraction"] == f"{float(row['tissue_fraction']):.4g}"

    browser.get(f"{live_server.url}/predictions/")
    assert "Liver biopsies" in browser.page_source
    screenshot(browser, "page-history")
    browser.get(f"{live_server.url}/predictions/dashboard/")
    assert "Recently finished" in browser.page_source and "Tissue area" in browser.page_source
    screenshot(browser, "page-dashboard")

    # Another lab's member: the prediction, its files and the experiment do not exist for them.
    log_in(browser, live_server, "bob")
    for url in (prediction_url, prediction_url + "progress/", f"{live_server.url}/experiments/"):
        browser.get(url)
        if url.endswith("/experiments/"):
            assert "Liver biopsies" not in browser.page_source
        else:
            assert "Not Found" in browser.title or "Not Found" in browser.page_source
