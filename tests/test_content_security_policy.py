"""The Content-Security-Policy (settings.CONTENT_SECURITY_POLICY): every response carries it, no
page holds what it refuses (an inline script, an on*= handler, a style attribute, a <style>
element), and in Chromium the pages, the slide viewer, the API docs and the admin work under it
without a single violation."""

import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from experiments.viewer import OPENSEADRAGON_JS
from predictions import engine, monitoring
from predictions.models import Status
from tests.browser import csp_violations, js, log_in, viewer_browser, wait_in_page
from tests.factories import PredictionFactory, SlideRunFactory

browser = pytest.fixture(viewer_browser, name="browser")

# What the policy refuses, as it appears in a page's HTML. A JSON data block (json_script) is not
# run, so it is allowed; every other <script> must load a file.
INLINE_SCRIPT = re.compile(r'<script\b(?![^>]*\bsrc=)(?![^>]*\btype="application/json")[^>]*>', re.I)
STYLE_ELEMENT = re.compile(r"<style\b[^>]*>", re.I)
TAG = re.compile(r"<[a-z][^>]*>", re.I)
REFUSED_IN_A_TAG = re.compile(
    r"\son[a-z]+\s*="                                   # an inline event handler
    r"|\sstyle\s*="                                     # a style attribute
    r"|=\s*[\"']?\s*javascript:"                        # a javascript: URL
    r"|\s(?:data-)?hx-on|\s(?:data-)?hx-vars\s*="       # htmx code that needs eval ...
    r"|\s(?:data-)?hx-(?:vals|headers)\s*=\s*[\"']\s*(?:js|javascript):"
    r"|\s(?:data-)?hx-trigger\s*=\s*[\"'][^\"']*\[",    # ... and an htmx event filter
    re.I)


def refused(html: str) -> list[str]:
    """Every piece of the page that the policy would refuse."""
    return (INLINE_SCRIPT.findall(html) + STYLE_ELEMENT.findall(html)
            + [tag for tag in TAG.findall(html) if REFUSED_IN_A_TAG.search(tag)])


def policy(response) -> dict[str, list[str]]:
    """The response's policy, {directive: [sources]}."""
    parts = [part.split() for part in response["Content-Security-Policy"].split(";") if part.strip()]
    return {name: sources for name, *sources in parts}


@pytest.fixture
def workers_answer_from_cache():
    # Pages that list the workers read them from a short cache: filled here, no page waits for a
    # broadcast to workers that this test does not start.
    cache.set(monitoring.WORKERS_CACHE_KEY, {"at": time.time(), "workers": []}, 600)
    cache.set(monitoring.DEPTHS_CACHE_KEY, {"cpu": 0, "gpu": 0}, 600)
    yield
    cache.clear()


def predictions_of(slide, pipelines):
    """Two finished predictions computed in this process, whose pages show each kind of computed
    style: nuclei-density a colour scale and a histogram, tissue-area a mask's colour; and one
    running, for the progress bars."""
    with engine.inline_steps() as steps:
        density = engine.submit(slide.experiment, pipelines["nuclei-density"], [slide])
        area = engine.submit(slide.experiment, pipelines["tissue-area"], [slide])
        steps.run()
    density.refresh_from_db()
    area.refresh_from_db()
    assert density.status == area.status == Status.SUCCEEDED
    running = PredictionFactory(experiment=slide.experiment, status=Status.RUNNING,
                                total_units=10, done_units=4)
    SlideRunFactory(prediction=running, slide=slide, total_units=10, done_units=4)
    return density, area, running


def test_pages_the_api_docs_and_the_api_carry_a_strict_policy(alice_client, alice_api, experiment,
                                                               workers_answer_from_cache):
    for response in (alice_client.get(reverse("predictions:dashboard")), Client().get(reverse("api-docs")),
                     alice_api.get("/api/v1/experiments/", HTTP_ACCEPT="application/json")):
        assert response.status_code == 200
        directives = policy(response)
        assert directives["default-src"] == directives["script-src"] == ["'self'"]
        assert directives["object-src"] == directives["frame-ancestors"] == ["'none'"]
        assert directives["base-uri"] == directives["form-action"] == ["'self'"]
        assert directives["style-src"][0] == "'self'"
        unsafe = {"'unsafe-inline'", "'unsafe-eval'"}
        assert not unsafe & {*directives["script-src"], *directives["style-src"]}


def test_the_one_style_allowed_by_hash_is_the_one_openseadragon_adds():
    path = finders.find(OPENSEADRAGON_JS)
    if not path:
        pytest.skip("OpenSeadragon is not in static/vendor/ (make static-vendor)")
    assert settings.OPENSEADRAGON_STYLE in Path(path).read_text()


@pytest.mark.django_db(transaction=True)
def test_no_page_holds_what_the_policy_refuses(alice_client, admin_client, slide, pipelines, share,
                                               workers_answer_from_cache):
    density, area, running = predictions_of(slide, pipelines)
    experiment = slide.experiment
    member_pages = [
        reverse("predictions:dashboard"), reverse("predictions:dashboard_live"),
        reverse("experiments:list"), experiment.get_absolute_url(),
        reverse("experiments:slides", args=[experiment.pk]),
        reverse("experiments:create"), reverse("experiments:edit", args=[experiment.pk]),
        reverse("experiments:import", args=[experiment.pk]),
        reverse("experiments:viewer", args=[slide.pk]) + f"?run={density.runs.get().pk}",
        reverse("predictions:new", args=[experiment.pk]),
        density.get_absolute_url(), area.get_absolute_url(), running.get_absolute_url(),
        reverse("predictions:progress", args=[density.pk]),
        reverse("predictions:history") + f"?experiment={experiment.pk}",
        reverse("predictions:compare") + f"?a={area.pk}&b={density.pk}",
    ]
    staff_pages = [
        reverse("predictions:monitoring"), reverse("admin:index"),
        reverse("admin:predictions_prediction_changelist"),
        reverse("admin:predictions_prediction_change", args=[density.pk]),
        reverse("admin:django_celery_beat_periodictask_add"),
    ]
    public_pages = [reverse("login"), reverse("api-docs")]
    shown = ""
    for client, urls in ((alice_client, member_pages), (admin_client, staff_pages), (Client(), public_pages)):
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            html = response.content.decode()
            assert refused(html) == [], url
            shown += html
    # The pages showed each kind of computed size and colour, now data- attributes and SVG.
    for marker in ("<rect width=", "data-height=", "data-gradient=", "data-colour=", "data-autosubmit"):
        assert marker in shown


def test_the_scan_finds_what_the_policy_refuses():
    page = """<script src="/static/a.js"></script><script id="c" type="application/json">{}</script>
        <div data-style="x" data-on="y" title="a style"><svg><rect width="40%"/></svg></div>"""
    assert refused(page) == []
    for bad in ("<script>alert(1)</script>", '<script type="module">x()</script>', "<style>p {}</style>",
                '<a onclick="go()">', '<span style="width: 3%">', '<a href="javascript:go()">',
                '<button hx-on:click="go()">', """<div hx-vals='js:{a: 1}'>""",
                '<div hx-trigger="click[ctrlKey]">'):
        assert refused(page + bad) != [], bad


def test_pages_viewer_docs_and_admin_work_in_chromium_without_a_violation(
        transactional_db, live_server, browser, slide, pipelines, alice, admin_user,
        workers_answer_from_cache):
    density, area, _ = predictions_of(slide, pipelines)
    experiment = slide.experiment

    def find(css):
        return browser.find_element(By.CSS_SELECTOR, css)

    def show(url, ready, message):
        browser.get(f"{live_server.url}{url}")
        wait_in_page(ready, timeout=30, message=message)
        assert csp_violations(browser) == [], url

    log_in(browser, live_server, "alice")
    # The check sees a violation: a <style> added by hand is refused, and reported.
    js(browser, "document.head.insertAdjacentHTML('beforeend', '<style>main { color: red }</style>')")
    reported = wait_in_page(lambda: csp_violations(browser), timeout=10, message="the violation reported")
    assert len(reported) == 1

    # The dashboard: a bar drawn at 40 %, and htmx still replacing the live part every few seconds.
    show(reverse("predictions:dashboard"), lambda: find(".running .progress rect"), "the running prediction")
    # Both widths in one script: htmx may swap the fragment between two separate reads.
    bar = js(browser, "const p = document.querySelector('.running .progress');"
                      "return [p.querySelector('rect').getBoundingClientRect().width,"
                      " p.getBoundingClientRect().width];")
    assert bar[0] == pytest.approx(0.4 * bar[1], abs=1)
    js(browser, "document.getElementById('dashboard').dataset.old = '1'")
    wait_in_page(lambda: js(browser, "return !document.getElementById('dashboard').dataset.old"),
                 timeout=15, message="htmx to refresh the dashboard")

    show(experiment.get_absolute_url(), lambda: find("#slides"), "the experiment page")

    # The prediction page: its colour scale and its histogram, sized and coloured by histoia.js.
    tallest_bar = ("return Math.max(...[...document.querySelectorAll('.plot .bars span')]"
                   ".map((s) => s.offsetHeight));")
    show(density.get_absolute_url(), lambda: js(browser, tallest_bar) > 10, "the histogram drawn")
    assert "linear-gradient" in find(".legend .gradient").value_of_css_property("background-image")

    # "Run a pipeline": choosing another pipeline submits the form.
    show(reverse("predictions:new", args=[experiment.pk]), lambda: find("select[name=pipeline]"), "pipelines")
    Select(find("select[name=pipeline]")).select_by_value(str(pipelines["tissue-area"].pk))
    chosen = f"pipeline={pipelines['tissue-area'].pk}"
    wait_in_page(lambda: chosen in browser.current_url, message="the form sent")

    # History: tick two, compare.
    show(reverse("predictions:history"), lambda: find("input[name=pick]"), "the history")
    for prediction in (density, area):
        find(f"input[name=pick][value='{prediction.pk}']").click()
    find(".compare-button").click()
    wait_in_page(lambda: "/predictions/compare/" in browser.current_url, message="the comparison")
    assert f"a={density.pk}" in browser.current_url and f"b={area.pk}" in browser.current_url

    # The slide viewer: OpenSeadragon's canvas with the run laid over the slide, and its legend.
    viewer = reverse("experiments:viewer", args=[slide.pk]) + f"?run={density.runs.get().pk}"
    show(viewer, lambda: find("#viewer").get_attribute("data-layers-loaded") == "1", "the slide, the overlay")
    assert browser.find_elements(By.CSS_SELECTOR, "#viewer .openseadragon-canvas canvas")
    assert "linear-gradient" in find(".viewer-side .gradient").value_of_css_property("background-image")

    # The API docs: Swagger UI lists the operations.
    show(reverse("api-docs"), lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 10,
         "Swagger UI's operations")

    # The admin, django-celery-beat's form too, whose script now comes from a file.
    log_in(browser, live_server, admin_user.username, "password")
    show(reverse("admin:predictions_prediction_change", args=[density.pk]), lambda: find("#prediction_form"),
         "the admin's change form")
    show(reverse("admin:django_celery_beat_periodictask_add"),
         lambda: not find(".field-crontab_translation").is_displayed(), "the crontab translation row hidden")
