"""End to end: four browser sessions at once on one server, each with its own model and variant.

Each session is a separate Playwright browser context (its own cookies, so its own Streamlit session),
set up through the real sidebar widgets. Playwright's sync API is driven from this one thread: every step
is started on all four pages before the next, so the server traces for several sessions at the same time.
Each page must then show its own model and variant in the Model view's figure titles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

pytestmark = pytest.mark.e2e

SEP = " · "
TIMEOUT = 150_000  # ms: the first trace of each model also loads it


@dataclass
class Session:
    model: str  # preset name, as the figure titles print it
    option: str  # the model selectbox's label for it
    variant: str  # picked in the "Variant" selectbox
    params: dict[str, str] = field(default_factory=dict)  # parameter text inputs to type into
    spec: str = ""  # the spec the trace reports, e.g. "sliding_window:w=2,sinks=auto"
    masked: bool = False  # the variant masks most pairs: its head map has many exact zeros (full has none)

    @property
    def heading(self) -> str:
        return f"{self.model}{SEP}{self.spec}{SEP}"

    @property
    def slug(self) -> str:
        return f"{self.model}_{self.spec}".replace(":", "_").replace(",", "_").replace("=", "")


SESSIONS = [
    Session("minilm", "minilm (bidirectional)", "full", spec="full"),
    Session("minilm", "minilm (bidirectional)", "sliding_window", {"w": "2"}, spec="sliding_window:w=2,sinks=auto",
            masked=True),
    Session("digits-vit", "digits-vit (vit)", "full", spec="full"),
    Session("digits-vit", "digits-vit (vit)", "window_2d", {"M": "2"}, spec="window_2d:M=2,shift=false",
            masked=True),
]

# The figure titles of a page, one string each; a title wrapped onto several lines (<br> at a ' · ') is joined back.
TITLES_JS = """() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => {
    const lines = [...t.querySelectorAll('tspan.line')].map(s => s.textContent.trim()).filter(Boolean);
    return (lines.length ? lines.join(' · ') : t.textContent).replace(/\\s+/g, ' ').trim();
})"""

# The share of exact zeros in the head heatmap of the Model view (the figure titled '... · layer 0 · head 0').
ZEROS_JS = """() => {
    const plot = [...document.querySelectorAll('.js-plotly-plot')].find(
        g => (g.querySelector('.gtitle') || {}).textContent.includes('head 0'));
    const z = plot.calcdata[0][0].z.map(row => Array.from(row)).flat();
    return z.filter(v => v === 0).length / z.length;
}"""

READY_JS = """([heading, count]) => {
    if (document.querySelector('[data-testid="stSpinner"]')) return false;
    if (document.querySelector('[data-testid="stException"]')) return true;  // fail fast, with the screenshot
    const titles = (""" + TITLES_JS + """)();
    return titles.length >= count && titles.every(t => t.startsWith(heading));
}"""


def combobox(page, label: str):
    """A sidebar selectbox's input (its value is the option shown)."""
    return page.locator("[data-testid='stSidebar']").get_by_role("combobox", name=label, exact=True)


def pick(page, label: str, option: str) -> None:
    """Open a sidebar selectbox by its label and click one option, as a user does (the caller waits for the rerun)."""
    combobox(page, label).click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_for_kind(page, s: Session) -> None:
    """The sidebar redrawn for the picked model (so the variant list is the one for its kind)."""
    uploader = page.locator("[data-testid='stSidebar'] [data-testid='stFileUploader']")
    if s.model == "digits-vit":
        uploader.wait_for(state="visible", timeout=TIMEOUT)
    else:
        page.locator("[data-testid='stSidebar'] textarea").first.wait_for(state="visible", timeout=TIMEOUT)


def type_param(page, name: str, value: str) -> None:
    box = page.locator("[data-testid='stSidebar'] [data-testid='stTextInput']").filter(
        has=page.get_by_text(name, exact=True)
    ).locator("input")
    box.fill(value)
    box.press("Enter")


def test_four_sessions_with_different_models_and_variants(server, browser, artifacts):
    start = time.monotonic()
    contexts = [browser.new_context(viewport={"width": 1500, "height": 1100}) for _ in SESSIONS]
    pages = [c.new_page() for c in contexts]
    try:
        for page in pages:  # every session connects and starts its first run before any is waited on
            page.goto(server)
        for page, s in zip(pages, SESSIONS):
            if s.option != "minilm (bidirectional)":  # minilm is the default model
                pick(page, "Model", s.option)
        for page, s in zip(pages, SESSIONS):
            wait_for_kind(page, s)
            if s.variant != "full":
                pick(page, "Variant", s.variant)
        for page, s in zip(pages, SESSIONS):
            for name, value in s.params.items():
                type_param(page, name, value)
        for page, s in zip(pages, SESSIONS):  # all four are tracing or done; now wait on each in turn
            page.wait_for_function(READY_JS, arg=[s.heading, 2], timeout=TIMEOUT)

        seen = {}
        for i, (page, s) in enumerate(zip(pages, SESSIONS)):
            page.screenshot(path=str(artifacts / f"session_{i}_{s.slug}.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0, f"session {i}: an exception is shown"
            assert page.locator("[data-testid='stAlertContentError']").count() == 0, f"session {i}: an error is shown"
            titles = page.evaluate(TITLES_JS)
            assert len(titles) >= 2, (i, titles)  # the model grid and the head heatmap
            assert all(t.startswith(s.heading) for t in titles), f"session {i} ({s.heading!r}) shows {titles}"
            assert combobox(page, "Model").input_value() == s.option, f"session {i}: the model selectbox changed"
            assert combobox(page, "Variant").input_value() == s.variant, f"session {i}: the variant selectbox changed"
            zeros = page.evaluate(ZEROS_JS)  # the map drawn is this session's own variant, not another's
            assert (zeros > 0.3) if s.masked else (zeros == 0), f"session {i} ({s.spec}): {zeros:.0%} of the map is 0"
            seen[s.heading] = titles
        assert len(seen) == len(SESSIONS)  # four different results, none swapped between sessions
        assert time.monotonic() - start < 180
    except Exception:
        for i, (page, s) in enumerate(zip(pages, SESSIONS)):  # what each page showed when it failed
            page.screenshot(path=str(artifacts / f"session_{i}_{s.slug}_failed.png"), full_page=True)
        raise
    finally:
        for c in contexts:
            c.close()
