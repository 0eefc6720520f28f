"""The Neuron view and Image view pages under Streamlit's AppTest, offline, with each preset."""

from __future__ import annotations

import json

import pytest
from apptest import charts, ok, open_page


def spec(chart) -> dict:
    return json.loads(chart.proto.spec)


@pytest.mark.parametrize("model", ["minilm", pytest.param("smollm2-135m", marks=pytest.mark.slow)])
def test_neuron_view_text_models(model, request):
    request.getfixturevalue("smollm" if model == "smollm2-135m" else "minilm")
    at = open_page("pages/neuron_view.py", model)
    ok(at)
    assert at.header[0].value == "Neuron view"
    assert len(charts(at)) == 1
    fig = spec(charts(at)[0])
    assert any("matches the recorded" in a["text"] for a in fig["layout"]["annotations"])
    query = at.selectbox(key="neuron_query")
    assert query.value == (len(query.options) - 1 if model == "smollm2-135m" else 1)  # decoders: the last token
    query.set_value(2).run()
    at.number_input(key="neuron_layer").set_value(1).run()
    at.number_input(key="neuron_head").set_value(3).run()
    ok(at)
    title = spec(charts(at)[0])["layout"]["title"]["text"]
    assert "layer 1 · head 3 · query 2 " in title
    assert at.get("download_button")


def test_neuron_view_digits_vit(digits_vit):
    at = open_page("pages/neuron_view.py", "digits-vit")
    ok(at)
    assert len(charts(at)) == 1


def test_image_view_digits_vit(digits_vit):
    at = open_page("pages/image_view.py", "digits-vit")
    ok(at)
    assert at.header[0].value == "Image view"
    assert len(charts(at)) == 2  # the attention overlay and the rollout
    first = spec(charts(at)[0])
    assert sum(t["type"] == "heatmap" for t in first["data"]) == 4 + 1  # each head and the mean
    assert not first["layout"].get("shapes")  # CLS: no patch outlined
    at.radio(key="image_query").set_value("patch").run()
    at.slider(key="image_row").set_value(1).run()
    at.radio(key="image_mode").set_value("mean").run()
    at.slider(key="image_residual").set_value(0.0).run()
    ok(at)
    attn, roll = (spec(c) for c in charts(at))
    assert sum(t["type"] == "heatmap" for t in attn["data"]) == 1
    rect = attn["layout"]["shapes"][0]  # patch (1, 4) of the 8×8 grid on the 32×32 digit
    assert (rect["x0"], rect["y0"]) == (15.5, 3.5)
    assert "residual 0" in roll["layout"]["annotations"][1]["text"]  # after "the image"
    assert at.get("download_button")


def test_image_view_on_a_text_model_is_an_info_line(minilm):
    at = open_page("pages/image_view.py", "minilm")
    ok(at)
    assert not charts(at)
    assert len(at.info) == 1 and "needs a vision model" in at.info[0].value and "digits-vit" in at.info[0].value
