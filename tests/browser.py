"""Headless Chromium for page tests (Debian's chromium and chromium-driver)."""

import shutil

import pytest

from tests.conftest import ARTIFACTS, PASSWORD, wait_for


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("chromium and chromedriver are needed for the browser tests "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = binary
    options.enable_downloads = True
    # The console log, where Chromium reports what the Content-Security-Policy refused.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.implicitly_wait(5)  # a page still loading after a click is not a failure
    return browser


def csp_violations(browser) -> list[str]:
    """What the Content-Security-Policy refused on the pages shown since the last call (reading
    the console log empties it). A refused inline script or style breaks the page silently."""
    messages = [entry["message"] for entry in browser.get_log("browser")]
    return [m for m in messages if "Content Security Policy" in m]


def quit_checking_csp(browser):
    """Quit, then fail if any page the browser showed broke the Content-Security-Policy."""
    violations = csp_violations(browser)
    browser.quit()
    assert not violations, "refused by the Content-Security-Policy:\n" + "\n".join(violations)


def screenshot(browser, name):
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def log_in(browser, live_server, username, password=PASSWORD):
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{live_server.url}/accounts/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(password)
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    # The next get() must not race the login POST and land wherever its redirect ends.
    wait_in_page(lambda: "/accounts/login/" not in browser.current_url
                 and browser.find_element(By.CSS_SELECTOR, "header .muted").text == username,
                 timeout=30, message=f"{username} logged in")


def wait_in_page(predicate, **kwargs):
    """wait_for on a live page: an element htmx swapped out mid-read only means "not yet".

    Polled fragments replace their elements every few seconds, so a reference found a moment
    ago can go stale (or be briefly absent) between the find and the read.
    """
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )

    def attempt():
        try:
            return predicate()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        except WebDriverException as error:
            if stale(error):
                return False
            raise

    return wait_for(attempt, **kwargs)


def stale(error) -> bool:
    """Whether a WebDriver error says the element has left the page: Chromium sometimes says it
    in its own words instead of StaleElementReferenceException, when the swap or the navigation
    lands inside its read."""
    from selenium.common.exceptions import StaleElementReferenceException

    return isinstance(error, StaleElementReferenceException) or "does not belong to the document" in str(error)


def click_through(browser, element, timeout=30):
    """Click a link or a submit button and wait until the page it opens has loaded.

    click() returns once the click is dispatched: reading the page before the next one has
    loaded reads the old one (a CI run failed on exactly that, right after "Create").
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def next_page_loaded():
        try:
            old.tag_name  # still the old document
            return False
        except WebDriverException as error:
            if not stale(error):
                raise
            return browser.execute_script("return document.readyState") == "complete"

    wait_for(next_page_loaded, timeout=timeout, message="the next page to load")


def viewer_browser():
    """Chromium for pages that need the slide viewer: fails when OpenSeadragon is missing though
    npm could install it, skips when npm is missing. Use as `pytest.fixture(viewer_browser)`."""
    from django.contrib.staticfiles import finders

    from experiments.viewer import OPENSEADRAGON_JS

    if not finders.find(OPENSEADRAGON_JS):
        message = "OpenSeadragon is not in static/vendor/: run `make static-vendor`"
        if shutil.which("npm"):
            pytest.fail(message)
        pytest.skip(message + " (needs npm, which this machine lacks)")
    b = chromium()
    yield b
    quit_checking_csp(b)


def js(browser, script, *args):
    return browser.execute_script(script, *args)
