"""The model-view page under Streamlit's AppTest, offline, with each preset."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")


def app() -> AppTest:
    return AppTest.from_file(MAIN, default_timeout=180)


def charts(at):
    return at.get("plotly_chart")


@pytest.mark.slow
def test_first_screen_shows_minilm_attention(minilm):
    at = app().run()
    assert not at.exception and not at.error
    assert at.sidebar.selectbox[0].value == "minilm"
    assert len(charts(at)) == 2  # the grid and one head, with no clicks


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["smollm2-135m", "digits-vit"])
def test_other_presets(preset, smollm, digits_vit):
    at = app().run()
    at.sidebar.selectbox[0].set_value(preset).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(charts(at)) == 2
    at.number_input(key="layer").set_value(2).run()
    at.number_input(key="head").set_value(1).run()
    assert not at.exception and len(charts(at)) == 2


@pytest.mark.slow
def test_bad_variant_is_one_error_not_a_traceback(minilm):
    at = app().run()
    at.sidebar.text_input[0].set_value("no_such_variant").run()
    assert not at.exception
    assert len(at.error) == 1 and "unknown variant" in at.error[0].value
