"""End to end: the real server in a real browser."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_first_screen_renders_minilm_attention(server, browser, artifacts):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(server)
    # Plotly draws each figure into a .js-plotly-plot element once the trace is ready
    page.wait_for_selector(".js-plotly-plot", timeout=120_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=120_000)
    assert page.locator(".js-plotly-plot .heatmaplayer, .js-plotly-plot image").count() >= 1
    assert "minilm" in page.content()
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(artifacts / "model_view.png"), full_page=True)
    page.close()
