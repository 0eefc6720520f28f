"""Driving the app under Streamlit's AppTest.

AppTest re-runs only the page script after its first run under st.navigation, so the sidebar's
choices go into session state before that run; the end-to-end tests drive the real sidebar.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def open_page(page: str, model: str, **state) -> AppTest:
    """The app with `model` (and any widget values in `state`) picked, switched to `page`."""
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["model"] = model
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    return at.switch_page(page).run()


def ok(at) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def charts(at) -> list:
    return at.get("plotly_chart")
