"""End to end, issue 14: a long input (smollm2-135m, ~1200 tokens) shows progress while it is traced, and its
pooled map is navigable: positions on the axes, a click or a zoom opens that region's exact tile.

The second test reuses the first one's trace when both run (the server caches it); alone it traces it itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ui import (
    TIMEOUT,
    assert_clean,
    full_screenshot,
    new_page,
    numbers,
    open_page,
    pick_model,
    point_px,
    set_text,
    start,
    wait_plots,
)

pytestmark = pytest.mark.e2e

TEXT = (Path(__file__).resolve().parents[2] / "analysis" / "data" / "perplexity.txt").read_text()[:5600]
TILE_TITLE = re.compile(r"exact tile queries (\d+)–(\d+) × keys (\d+)–(\d+)")


def long_input(page, server) -> None:
    start(page, server)
    pick_model(page, "smollm2-135m (causal)")
    set_text(page, TEXT)


def test_a_long_trace_shows_progress_with_a_count(server, browser):
    """Item 7: while a long text is traced, a progress bar counts the layers done (of 30) and the time left."""
    page = new_page(browser)
    long_input(page, server)
    page.wait_for_function("""() => /Tracing .*: \\d+\\/30 layers/.test(
        (document.querySelector('[data-testid="stProgress"]') || {}).innerText || '')""", timeout=TIMEOUT)
    wait_plots(page, 2)
    assert_clean(page, "model view, long input")


def tile_of(page) -> tuple[range, range]:
    """The query and key positions of the exact tile on screen."""
    for t in page.evaluate("() => [...document.querySelectorAll('.st-key-head_tile .gtitle')].map(t => t.textContent)"):
        m = TILE_TITLE.search(t.replace(" ·", ""))
        if m:
            q0, q1, k0, k1 = map(int, m.groups())
            return range(q0, q1 + 1), range(k0, k1 + 1)
    raise AssertionError("no exact tile on the page")


def wait_tile_change(page, before: tuple[range, range]) -> tuple[range, range]:
    page.wait_for_function("""(before) => [...document.querySelectorAll('.st-key-head_tile .gtitle')]
        .some(t => !t.textContent.includes(before))""", arg=f"queries {before[0].start}–{before[0].stop - 1} ×",
                           timeout=TIMEOUT)
    wait_plots(page)
    return tile_of(page)


def test_a_click_or_a_zoom_on_the_pooled_map_opens_that_tile(server, browser, artifacts):
    """Item 6: the pooled map's axes read token positions; a click on a tile, then a zoom box, each open the
    exact attention of that region, labelled with its tokens."""
    page = new_page(browser, height=1400)
    long_input(page, server)
    wait_plots(page, 2)
    open_page(page, "Head view")
    wait_plots(page, 2)
    gd = ".st-key-head_pooled .js-plotly-plot"
    rows = page.evaluate(f"() => Array.from(document.querySelector('{gd}').data[0].y)")
    n_tiles = len(rows)
    ticks = page.evaluate(f"() => Array.from(document.querySelector('{gd}').layout.yaxis.ticktext)")
    assert max(int(t) for t in ticks) > n_tiles, ticks  # token positions, not tile numbers
    span = lambda label: range(numbers(label)[0], numbers(label)[1] + 1)  # noqa: E731 — '120–124 ‹text›'
    assert span(rows[-1]).stop > 1000  # the last tile ends near the last token

    before = tile_of(page)
    page.mouse.click(*point_px(page, "head_pooled", 40, 100))  # column 40 (keys), row 100 (queries)
    queries, keys = wait_tile_change(page, before)
    assert set(span(rows[100])) <= set(queries) and set(span(rows[40])) <= set(keys), (queries, keys)
    assert len(queries) <= 64 and len(keys) <= 64

    x0, y0 = point_px(page, "head_pooled", 150, 180)
    x1, y1 = point_px(page, "head_pooled", 170, 200)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()
    queries2, keys2 = wait_tile_change(page, (queries, keys))
    assert queries2.start in span(rows[180]) and queries2.stop - 1 in span(rows[200]), queries2
    assert keys2.start in span(rows[150]) and keys2.stop - 1 in span(rows[170]), keys2
    labels = page.evaluate("() => Array.from(document.querySelector('.st-key-head_tile .js-plotly-plot').data[0].y)")
    assert len(labels) == len(queries2) and labels[0].startswith(f"{queries2.start} ")  # token labels
    assert_clean(page, "head view, long input")
    full_screenshot(page, artifacts / "long_input_head_view.png")
