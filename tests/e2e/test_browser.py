"""End to end: the real server (started as `make run` starts it) in Debian's Chromium, at the README's width.

Every page shows a figure on arrival, with each preset and no click; no title is cut off. A second test makes
the README's screenshots (test-artifacts/readme/, copied to docs/screenshots/): the same pages, set up to show
something worth a picture.
"""

from __future__ import annotations

import pytest
from ui import (
    TIMEOUT,
    assert_clean,
    clipped_titles,
    full_screenshot,
    new_page,
    open_page,
    overlapping_labels,
    pick,
    pick_model,
    start,
    wait_idle,
    wait_plots,
    widget_input,
)

pytestmark = pytest.mark.e2e

TEXT_PAGES = ["Model view", "Head view", "Neuron view", "Mask lab", "Compare", "Head metrics", "Query–key explorer",
              "Quality lens"]
PRESETS = {"minilm (bidirectional)": TEXT_PAGES, "smollm2-135m (causal)": TEXT_PAGES,
           "digits-vit (vit)": TEXT_PAGES[:3] + ["Image view"] + TEXT_PAGES[3:]}


def slug(title: str) -> str:
    return title.lower().replace(" ", "_").replace("–", "_")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_page_shows_a_figure_on_arrival(server, browser, artifacts, preset):
    page = new_page(browser)
    start(page, server)
    if not preset.startswith("minilm"):  # minilm is the default model
        pick_model(page, preset)
    model = preset.split()[0]
    for title in PRESETS[preset]:
        open_page(page, title)
        wait_plots(page, 1)
        assert_clean(page, f"{model}: {title}")
        assert not clipped_titles(page), f"{model}: {title}: {clipped_titles(page)}"
        assert not overlapping_labels(page), f"{model}: {title}: {overlapping_labels(page)}"
        full_screenshot(page, artifacts / f"arrival_{model}_{slug(title)}.png")
    page.context.close()


# README picture → (preset, sidebar variant and parameters, what to do on the page)
README = {
    "Model view": ("smollm2-135m (causal)", None, None),
    "Head view": ("minilm (bidirectional)", None, None),
    "Neuron view": ("minilm (bidirectional)", None, None),
    "Image view": ("digits-vit (vit)", None, None),
    "Mask lab": ("digits-vit (vit)", ("window_2d", {"M": "2"}), None),
    "Compare": ("smollm2-135m (causal)", None, "compare"),
    "Head metrics": ("smollm2-135m (causal)", None, None),
    "Query–key explorer": ("minilm (bidirectional)", None, None),
    "Quality lens": ("smollm2-135m (causal)", None, None),
}


def test_readme_screenshots(server, browser, artifacts):
    out = artifacts / "readme"
    out.mkdir(exist_ok=True)
    page = new_page(browser)
    start(page, server)
    current = "minilm (bidirectional)"
    for title, (preset, variant, action) in README.items():
        if preset != current:
            pick_model(page, preset)
            current = preset
        name, params = variant or ("full", {})
        pick(page, "Variant", name)
        for param, value in params.items():
            box = widget_input(page, f"variant_{name}_{param}")
            box.fill(value)
            box.press("Enter")
            wait_idle(page)
        open_page(page, title)
        if action == "compare":
            page.get_by_role("button", name="Compare", exact=True).click()
            page.locator(".st-key-cmp_output .js-plotly-plot").wait_for(timeout=TIMEOUT)
        wait_plots(page, 1)
        assert_clean(page, title)
        assert not clipped_titles(page), f"{title}: {clipped_titles(page)}"
        assert not overlapping_labels(page), f"{title}: {overlapping_labels(page)}"
        full_screenshot(page, out / f"page_{slug(title)}.png")
    page.context.close()
