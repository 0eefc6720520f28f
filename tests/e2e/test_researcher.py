"""End to end, issue 14: a researcher's clicks and inputs do what the page says (the real server, Chromium).

Each test is one user story on its own browser session; the server (and its model cache) is shared.
"""

from __future__ import annotations

import pytest
from ui import (
    TIMEOUT,
    assert_clean,
    new_page,
    open_page,
    pick,
    pick_model,
    plot,
    point_px,
    set_text,
    sidebar_combobox,
    start,
    titles,
    wait_idle,
    wait_plots,
    wait_title,
    widget_input,
)

pytestmark = pytest.mark.e2e


def wait_value(page, key: str, value: str) -> None:
    page.wait_for_function("([sel, v]) => (document.querySelector(sel) || {}).value === v",
                           arg=[f".st-key-{key} input", value], timeout=TIMEOUT)


def test_clicking_a_thumbnail_picks_its_head(server, browser):
    """Item 1: a click on the thumbnail of layer 1 · head 4 sets Layer/Head and opens that head's map."""
    page = new_page(browser)
    start(page, server)
    ticks = page.evaluate("""() => { const L = document.querySelector('.st-key-grid .js-plotly-plot')._fullLayout;
        return [Array.from(L.xaxis.tickvals), Array.from(L.yaxis.tickvals)]; }""")
    x, y = ticks[0][4], ticks[1][1]  # the centre of head 4's column and of layer 1's row
    page.mouse.click(*point_px(page, "grid", x, y))
    wait_value(page, "model_layer", "1")
    wait_value(page, "model_head", "4")
    wait_title(page, "layer 1 · head 4")
    assert_clean(page, "model view")


def test_compare_traces_only_when_asked_and_keeps_what_was_typed(server, browser):
    """Item 2: opening Compare or typing a variant traces nothing; the typed variant survives a page change."""
    page = new_page(browser)
    start(page, server)
    open_page(page, "Compare")
    assert not any("sliding_window" in t for t in titles(page)), titles(page)  # b (w=4 by default) not traced
    box = widget_input(page, "cmp_b")
    box.fill("sliding_window:w=2")
    box.press("Enter")
    wait_idle(page)
    assert not any("sliding_window" in t for t in titles(page)), titles(page)
    open_page(page, "Model view")
    open_page(page, "Compare")
    assert widget_input(page, "cmp_b").input_value() == "sliding_window:w=2"
    page.get_by_role("button", name="Compare", exact=True).click()
    page.wait_for_function("""() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]
        .some(t => t.textContent.includes('full vs sliding_window:w=2'))""", timeout=TIMEOUT)
    wait_idle(page)
    assert_clean(page, "compare")


def test_outputs_are_named_tokens_and_classes(server, browser):
    """Item 4: Compare's top-5 bars are decoded tokens, not ids; a ViT's page names its predicted class."""
    page = new_page(browser)
    start(page, server)
    pick_model(page, "smollm2-135m (causal)")
    open_page(page, "Compare")
    page.get_by_role("button", name="Compare", exact=True).click()
    plot(page, "cmp_output").wait_for(timeout=TIMEOUT)
    wait_idle(page)
    labels = page.evaluate("() => Array.from(document.querySelector('.st-key-cmp_output .js-plotly-plot').data[0].y)")
    assert len(labels) == 5 and not any(str(v).strip("“”# ").isdigit() for v in labels), labels
    assert any(c.isalpha() for v in labels for c in str(v)), labels
    pick_model(page, "digits-vit (vit)")
    open_page(page, "Model view")
    caption = page.get_by_text("predicted class:")
    caption.wait_for(timeout=TIMEOUT)
    assert "digits-vit" in caption.inner_text()


def test_mask_lab_starts_from_the_sidebar_and_codes_the_model(server, browser):
    """Item 5: the Mask lab opens on the sidebar's variant; its FlexAttention code names digits-vit's sizes."""
    page = new_page(browser)
    start(page, server)
    pick_model(page, "digits-vit (vit)")
    pick(page, "Variant", "window_2d")
    open_page(page, "Mask lab")
    picker = page.locator("[data-testid='stMain']").get_by_role("combobox", name="Variant to inspect", exact=True)
    assert picker.input_value() == "window_2d"
    code = page.locator("[data-testid='stCode']").first.inner_text()
    assert "GRID = (8, 8)" in code and "N_HEADS = 4" in code, code[:600]
    assert "N_PREFIX = 1" in code
    assert_clean(page, "mask lab")


def test_typed_text_survives_a_switch_to_a_vit_and_back(server, browser):
    """Item 8: text pasted for one model is still there after picking a ViT and coming back."""
    page = new_page(browser)
    start(page, server)
    text = "Attention maps of a sentence I typed myself, not an example."
    set_text(page, text)
    wait_plots(page)
    pick_model(page, "digits-vit (vit)")
    page.locator("[data-testid='stSidebar'] [data-testid='stFileUploader']").wait_for(timeout=TIMEOUT)
    pick_model(page, "minilm (bidirectional)")
    assert page.locator("[data-testid='stSidebar'] textarea").first.input_value() == text
    assert sidebar_combobox(page, "Model").input_value() == "minilm (bidirectional)"


# plotly's WebGL pick of the 3D scatter: how far (px) the mouse is from the point it would click
PICK_JS = """() => { const sel = document.querySelector('.st-key-qk_scatter .js-plotly-plot')
    ._fullLayout.scene._scene.glplot.selection; return sel ? sel.distance : null; }"""


def test_clicking_a_point_in_the_3d_plot_selects_it(server, browser):
    """Item 9: in the query–key explorer's 3D plot, a click on a point selects that point."""
    page = new_page(browser, height=1200)
    start(page, server)
    open_page(page, "Query–key explorer")
    page.get_by_text("Layer, head, inputs and projection").click()
    page.locator("[data-testid='stMain'] label").filter(has_text="3D").click()
    page.wait_for_function("""() => { const g = document.querySelector('.st-key-qk_scatter .js-plotly-plot');
        return g && g._fullLayout.scene && g._fullLayout.scene._scene; }""", timeout=TIMEOUT)
    wait_idle(page)
    # the hover event says which point is under the mouse; plotly clicks it only when its pick is within 5 px
    page.evaluate("""() => document.querySelector('.st-key-qk_scatter .js-plotly-plot')
        .on('plotly_hover', e => { window.__qkHover = e.points[0].customdata; })""")
    plot(page, "qk_scatter").scroll_into_view_if_needed()
    box = plot(page, "qk_scatter").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    target = None
    for r in range(0, 240, 3):  # along a diagonal from the centre until the mouse is on a point (not the first)
        page.mouse.move(cx + r, cy + r / 2)
        page.wait_for_timeout(60)
        hover = page.evaluate("() => window.__qkHover ?? null")
        if hover not in (None, 0) and (page.evaluate(PICK_JS) or 99) <= 2:
            target = int(hover)
            break
    assert target is not None, "no point found under the mouse"
    page.mouse.down()
    page.wait_for_timeout(80)
    page.mouse.up()
    wait_value(page, "qk_point", str(target))
    wait_idle(page)
    assert_clean(page, "query–key explorer")
