"""Steps a user takes in the real app, for the browser tests: open a page, pick in the sidebar, click in a plot.

Waits use Playwright's auto-waiting on the page's own state (a figure drawn, the app idle), never fixed sleeps.
"""

from __future__ import annotations

import os
import re

# ms: a model's first load and a long trace on a busy 2-core machine (lower it to see failures sooner)
TIMEOUT = int(os.environ.get("ATTNSCOPE_E2E_TIMEOUT_MS", "240000"))
WIDTH = 1400  # the README's screenshots are taken at this width

IDLE_JS = """() => !document.querySelector('[data-testid="stStatusWidget"]')
    && !document.querySelector('[data-testid="stSpinner"]') && !document.querySelector('[data-testid="stProgress"]')"""

# The figure titles of a page, one string each; a title wrapped onto several lines is joined back with ' · '.
TITLES_JS = """() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => {
    const lines = [...t.querySelectorAll('tspan.line')].map(s => s.textContent.trim()).filter(Boolean);
    return (lines.length ? lines.join(' ') : t.textContent).replace(/\\s+/g, ' ').trim();
})"""


def new_page(browser, height: int = 1000):
    """A page in its own browser context: its own cookies, so its own Streamlit session."""
    context = browser.new_context(viewport={"width": WIDTH, "height": height})
    return context.new_page()


def wait_idle(page, timeout: int = TIMEOUT) -> None:
    """The script run is over: no 'Running' status, spinner or progress bar."""
    page.wait_for_timeout(300)  # let a rerun that was just triggered start
    page.wait_for_function(IDLE_JS, timeout=timeout)


def wait_title(page, ending: str, timeout: int = TIMEOUT) -> None:
    """A figure whose title ends with `ending` is drawn (a rerun may start well after the click on a busy machine)."""
    page.wait_for_function(f"() => ({TITLES_JS})().some(t => t.endsWith({ending!r}))", timeout=timeout)
    wait_idle(page, timeout)


def wait_plots(page, at_least: int = 1, timeout: int = TIMEOUT) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {at_least}", timeout=timeout)
    wait_idle(page, timeout)


def start(page, server: str) -> None:
    page.goto(server)
    wait_plots(page)


def open_page(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.wait_for_function(
        f"[...document.querySelectorAll('h2')].some(h => h.innerText.includes({title!r}))", timeout=TIMEOUT)
    wait_idle(page)


def sidebar_combobox(page, label: str):
    return page.locator("[data-testid='stSidebar']").get_by_role("combobox", name=label, exact=True)


def pick(page, label: str, option: str) -> None:
    """Open a sidebar selectbox by its label and click one option, as a user does; wait for the rerun."""
    sidebar_combobox(page, label).click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def pick_model(page, option: str) -> None:
    pick(page, "Model", option)
    wait_plots(page)


def set_text(page, text: str) -> None:
    """Type a new text into the sidebar's Text box and commit it (Ctrl+Enter)."""
    box = page.locator("[data-testid='stSidebar'] textarea").first
    box.fill(text)
    box.press("Control+Enter")


def widget_input(page, key: str):
    """The <input> of the widget drawn with `key=`."""
    return page.locator(f".st-key-{key} input").first


def titles(page) -> list[str]:
    return page.evaluate(TITLES_JS)


def plot(page, key: str):
    return page.locator(f".st-key-{key} .js-plotly-plot").first


def point_px(page, key: str, x, y) -> tuple[float, float]:
    """Page coordinates of the data point (x, y) of the first subplot of chart `key` (categories by index)."""
    box = plot(page, key).bounding_box()
    px = page.evaluate("""([sel, x, y]) => {
        const gd = document.querySelector(sel), L = gd._fullLayout;
        return [L.xaxis._offset + L.xaxis.l2p(x), L.yaxis._offset + L.yaxis.l2p(y)];
    }""", [f".st-key-{key} .js-plotly-plot", x, y])
    return box["x"] + px[0], box["y"] + px[1]


def assert_clean(page, where: str = "") -> None:
    """No exception and no error box on the page."""
    assert page.locator("[data-testid='stException']").count() == 0, f"{where}: an exception is shown"
    errors = page.locator("[data-testid='stAlertContentError']").all_inner_texts()
    assert not errors, f"{where}: {errors}"


def clipped_titles(page) -> list[str]:
    """Figure titles that run past their figure's right edge (cut off on screen)."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(g => {
        const t = g.querySelector('.gtitle');
        if (!t) return [];
        const r = g.getBoundingClientRect(), b = t.getBoundingClientRect();
        return b.right > r.right + 1 ? [t.textContent] : [];
    })""")


def overlapping_labels(page) -> list[str]:
    """Panel titles (plotly annotations) of one figure that overlap each other on screen."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(g => {
        const boxes = [...g.querySelectorAll('.annotation-text')].map(a => [a.textContent, a.getBoundingClientRect()]);
        return boxes.flatMap(([t, a], i) => boxes.slice(i + 1).filter(([, b]) =>
            a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
            .map(([u]) => t + ' / ' + u));
    })""")


def full_screenshot(page, path) -> None:
    """The whole page: Streamlit scrolls its main block, so the window is made as tall as the content first."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": max(800, min(int(height) + 40, 8000))})
    wait_idle(page)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def numbers(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"\d+", text)]
