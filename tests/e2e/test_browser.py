"""End to end: the real server (started as `make run` starts it) in Debian's Chromium."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def wait_for_plots(page, at_least: int, timeout: int = 180_000) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {at_least}", timeout=timeout)
    page.wait_for_function("!document.querySelector('[data-testid=\"stSpinner\"]')", timeout=timeout)


def open_page(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.wait_for_function(
        f"[...document.querySelectorAll('h2')].some(h => h.innerText.includes('{title}'))", timeout=120_000
    )


def assert_clean(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[data-testid='stAlertContentError']").count() == 0


def test_model_view_then_head_view_then_compare(server, browser, artifacts):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(server)
    wait_for_plots(page, 2)
    assert "minilm" in page.content()
    assert page.locator(".js-plotly-plot .heatmaplayer").count() >= 1
    assert_clean(page)
    page.screenshot(path=str(artifacts / "model_view.png"), full_page=True)

    open_page(page, "Head view")
    wait_for_plots(page, 2)
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 1  # the token lines
    assert_clean(page)
    page.screenshot(path=str(artifacts / "head_view.png"), full_page=True)

    open_page(page, "Compare")
    wait_for_plots(page, 3)
    page.wait_for_function("document.body.innerText.includes('KL of the output') || "
                           "document.body.innerText.includes('Mean cosine')", timeout=60_000)
    assert_clean(page)
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)
    page.close()


PAGES = ["Model view", "Head view", "Neuron view", "Mask lab", "Compare", "Head metrics", "Query–key explorer",
         "Quality lens"]


def pick_model(page, label: str) -> None:
    page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").first.click()
    page.get_by_role("option", name=label).click()


def test_every_page_renders_and_is_screenshotted(server, browser, artifacts):
    """A screenshot of each page (the README shows them); no page shows an exception."""
    page = browser.new_page(viewport={"width": 1500, "height": 1500})
    page.goto(server)
    wait_for_plots(page, 2)
    for title in PAGES:
        open_page(page, title)
        page.wait_for_timeout(500)
        if title != "Quality lens":  # the sweep runs on request only
            wait_for_plots(page, 1)
        page.wait_for_function("!document.querySelector('[data-testid=\"stProgress\"]')", timeout=180_000)
        assert page.locator("[data-testid='stException']").count() == 0, title
        name = title.lower().replace(" ", "_").replace("–", "_")
        page.screenshot(path=str(artifacts / f"page_{name}.png"), full_page=True)
    pick_model(page, "digits-vit (vit)")
    open_page(page, "Image view")
    wait_for_plots(page, 1)
    assert_clean(page)
    page.screenshot(path=str(artifacts / "page_image_view.png"), full_page=True)
    page.close()
