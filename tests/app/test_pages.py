"""Every page under Streamlit's AppTest, offline, with each preset picked in the sidebar."""

from __future__ import annotations

import json

import pytest
from apptest import MAIN, charts, ok, open_page
from streamlit.testing.v1 import AppTest

PRESET_FIXTURE = {"minilm": "minilm", "smollm2-135m": "smollm", "digits-vit": "digits_vit"}
MODELS = ["minilm", pytest.param("smollm2-135m", marks=pytest.mark.slow), "digits-vit"]


@pytest.fixture()
def preset(request):
    model = request.param
    request.getfixturevalue(PRESET_FIXTURE[model])  # loaded once per session (and cached by the app)
    return model


@pytest.mark.parametrize("preset", MODELS, indirect=True)
@pytest.mark.parametrize("page,min_charts", [
    ("pages/model_view.py", 2), ("pages/head_view.py", 1), ("pages/mask_lab.py", 1), ("pages/compare.py", 1),
    ("pages/head_metrics.py", 3), ("pages/quality.py", 1),
])
def test_page_renders(page, min_charts, preset):
    at = open_page(page, preset)
    ok(at)
    assert len(charts(at)) >= min_charts


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_head_view_lines_follow_layer_head_and_focus(preset):
    at = open_page("pages/head_view.py", preset)
    at.number_input(key="head_layer").set_value(3).run()
    at.number_input(key="head_head").set_value(5).run()
    at.selectbox(key="head_focus").set_value(at.selectbox(key="head_focus").options[2]).run()
    ok(at)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts(at)]
    assert any("layer 3 · heads 5 · query 1" in t for t in titles)
    assert any("layer 3 · head 5" in t for t in titles)


@pytest.mark.parametrize("preset", ["digits-vit"], indirect=True)
def test_mask_lab_grid_and_snippet_for_a_vit(preset):
    at = open_page("pages/mask_lab.py", preset, variant_name="window_2d")  # the lab starts from the sidebar's
    assert at.selectbox(key="lab_name").value == "window_2d"
    ok(at)
    assert len(charts(at)) == 2  # the matrix and the grid for one query
    assert "create_block_mask" in at.code[0].value
    assert any("Blocks kept at 64" in m.label for m in at.metric)
    code = at.code[0].value
    assert "GRID = (8, 8)" in code and "N_HEADS = 4" in code and "N_PREFIX = 1" in code  # digits-vit's own sizes


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_mask_lab_content_variant_explains_itself(preset):
    at = open_page("pages/mask_lab.py", preset, variant_name="topk")
    ok(at)
    assert any("decides per input" in i.value for i in at.info)


@pytest.mark.parametrize("preset", ["digits-vit"], indirect=True)
def test_compare_traces_on_request_and_shows_output_change(preset):
    at = open_page("pages/compare.py", preset)
    at.text_input(key="cmp_b").set_value("window_2d:M=2").run()
    ok(at)
    assert not at.metric and len(charts(at)) == 1  # nothing compared until asked: the sidebar's own trace
    at.button(key="cmp_run").click().run()
    ok(at)
    labels = {m.label: m.value for m in at.metric}
    assert "Top-1 agreement" in labels and "KL of the output" in labels
    assert len(charts(at)) == 3
    assert at.radio(key="cmp_which").value == "moved"  # the default per-head change: attention moved
    assert len(at.get("download_button")) >= 3 * 6  # the maps, the per-head change and the outputs


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_compare_refuses_models_with_other_tokenizers(preset, digits_vit):
    at = open_page("pages/compare.py", preset)
    at.text_input(key="cmp_model_b").set_value("digits-vit").run()
    at.button(key="cmp_run").click().run()
    assert not at.exception and len(at.error) == 1


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_bad_variant_parameter_is_one_error(preset):
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["variant_name"] = "sliding_window"
    at.session_state["variant_sliding_window_w"] = "-5"
    at.run()
    assert not at.exception
    assert [e.value for e in at.sidebar.error] == ["sliding_window: w=-5 out of range; expected an int in [0, inf]"]
    assert at.session_state["selection"].variant == "full"  # nothing ran with the bad value


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_long_text_is_refused_then_truncated_on_request(preset):
    long_text = " ".join(["word"] * 700)  # minilm takes 512 tokens
    at = open_page("pages/model_view.py", preset, text_Sentence=long_text)
    assert not at.exception
    assert len(at.error) == 1 and "takes at most 512" in at.error[0].value and "Truncate" in at.error[0].value
    at = open_page("pages/model_view.py", preset, text_Sentence=long_text, truncate=True)
    ok(at)
    assert any("190 dropped" in c.value for c in at.caption)
    assert len(charts(at)) >= 2


def test_unknown_model_id_in_the_app_is_one_error():
    from app.session import CUSTOM

    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["model"] = CUSTOM
    at.session_state["model_id"] = "no-such-org/no-such-model"
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error] + [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and "not in the local Hugging Face cache" in errors[0]
    assert not any("Pick a model" in i.value for i in at.info)  # no second, contradictory message


def test_image_upload_is_limited_in_type_and_size(digits_vit):
    """The browser refuses other types and files over 20 MB before they reach the server."""
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["model"] = "digits-vit"
    at.run()
    uploader = at.sidebar.get("file_uploader")[0].proto
    assert list(uploader.type) == [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"]
    assert uploader.max_upload_size_mb == 20


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_a_layers_box_that_names_no_layer_is_one_error(preset):
    """Issue 15 item 8: "," in the Layers box is refused in one line, not a variant applied nowhere."""
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["model"] = preset
    at.session_state["layers"] = ","
    at.run()
    assert not at.exception
    assert len(at.sidebar.error) == 1 and "','" in at.sidebar.error[0].value
    assert at.session_state["selection"].layers is None  # the variant applies to all layers, as the line says
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["model"] = preset
    at.session_state["layers"] = "0, 2"
    at.run()
    assert at.session_state["selection"].layers == (0, 2) and not at.sidebar.error


def test_an_unexpected_error_shows_one_line_without_its_details(monkeypatch):
    """Issue 15 item 12: an error not phrased for the user (it may name server paths) shows its type only."""
    from app import session

    def boom(model_id):
        raise OSError("/srv/secret/models/x does not appear to have a file named config.json")

    monkeypatch.setattr(session, "get_model", boom)
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.session_state["model"] = session.CUSTOM
    at.session_state["model_id"] = "/srv/secret/models/x"
    at.run()
    errors = [e.value for e in at.error] + [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and "OSError" in errors[0] and "/srv" not in errors[0], errors


@pytest.mark.parametrize("preset", ["minilm"], indirect=True)
def test_a_request_over_the_memory_budget_is_one_line_and_others_carry_on(preset, monkeypatch):
    """Issue 15 item 11: over the budget, a page refuses in one message; a session within it still draws."""
    long_text = " ".join(["word"] * 500)
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "0.02")
    big = open_page("pages/model_view.py", preset, text_Sentence=long_text)
    assert not big.exception and len(big.error) == 1 and "memory budget" in big.error[0].value
    assert not charts(big)
    small = open_page("pages/model_view.py", preset)  # another session, the short example, same budget
    ok(small)
    assert len(charts(small)) >= 2


@pytest.mark.parametrize("preset", ["digits-vit"], indirect=True)
def test_quality_lens_opens_on_the_shipped_sweep_and_keeps_finished_points_on_stop(preset, monkeypatch):
    """Items 13 and 7: the shipped sweep on arrival; the user's sweep point by point, and a Stop in the
    middle keeps the finished points (and does not restart)."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    import analysis.quality as quality

    at = open_page("pages/quality.py", preset)
    ok(at)
    assert len(charts(at)) == 2 and any("sweep_digits_vit.json" in c.value for c in at.caption)  # curve + damage
    real, calls = quality.sweep, []

    def stop_on_the_second_point(lm, specs, **kw):
        calls.append(specs)
        if len(calls) == 2:
            raise StopException()  # what Streamlit raises in the script when the user presses Stop
        return real(lm, specs, **kw)

    monkeypatch.setattr(quality, "sweep", stop_on_the_second_point)
    at.text_area(key="q_specs").set_value("full\nwindow_2d:M=2|4")
    at.number_input(key="q_limit").set_value(4)
    at.button(key="q_run").click().run()
    at.run()  # the next run, after the Stop
    assert not at.exception and calls == [["full"], ["window_2d:M=2"]]
    assert any("Stopped: 1 of 3 points" in w.value for w in at.warning), [w.value for w in at.warning]
    assert [r["variant"] for r in at.dataframe[0].value.to_dict("records")] == ["full"]
    assert len(calls) == 2  # nothing restarted by itself
