"""The query–key explorer: its view builders on synthetic embeddings, and the page under AppTest offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from apptest import ok, open_page

from analysis import qk_embed as qe
from app.views import qk_view

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "pages" / "qk_explorer.py")


def fake_set(h=2, lengths=(6, 5), d=8, seed=0) -> qe.QKSet:
    rng = np.random.default_rng(seed)
    t = sum(lengths)
    probs = [rng.dirichlet(np.ones(n), size=(h, n)) for n in lengths]
    tokens = ["[CLS]", "a", "<b>", ",", "7", "[SEP]", "[CLS]", "x", "*y*", "2", "[SEP]"][:t]
    kinds = [qe.token_kind(tok, tok.startswith("[")) for tok in tokens]
    cuts = np.cumsum([0, *lengths])
    context = [c for a, b in zip(cuts, cuts[1:]) for c in qe.contexts(tokens[a:b])]
    return qe.QKSet(
        model_id="fake", kind="bidirectional", layer=0, q=rng.normal(size=(h, t, d)), k=rng.normal(size=(h, t, d)),
        tokens=tokens, token_kind=kinds, context=context,
        input_index=np.repeat(np.arange(len(lengths)), lengths),
        position=np.concatenate([np.arange(n) for n in lengths]), offsets=cuts,
        probs=probs, inputs=["a", "b"], names=["a", "b"], inputs_hash=f"view{seed}",
    )


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("colour", qe.FIELDS)
def test_scatter_every_colour_field(colour, dims):
    emb = qe.embed(fake_set(), 1, "pca", dims)
    fig = qk_view.scatter(emb, colour, selected=3)
    assert isinstance(fig, go.Figure)
    points = [tr for tr in fig.data if tr.name != "selected"]
    assert sum(len(tr.x) for tr in points) == len(emb)  # every query and key drawn once
    assert all(tr.type == ("scatter3d" if dims == 3 else "scatter") for tr in fig.data)
    ids = sorted(int(i) for tr in points for i in tr.customdata)
    assert ids == list(range(len(emb)))
    hover = " ".join(t for tr in points for t in tr.text)
    assert "&lt;b&gt;" in hover and "<b>a</b>" in hover  # tokens escaped, the token in its context bold
    assert "layer 0 · head 1" in fig.layout.title.text


def test_point_at_and_matrix_and_rows():
    qks = fake_set()
    assert qk_view.point_at({"customdata": 5}) == 5 and qk_view.point_at({"customdata": [7]}) == 7
    assert qk_view.point_at({}) is None
    heads = qk_view.heads_matrix(qe.all_heads(qks), selected_head=1)
    assert {int(tr.customdata[0]) for tr in heads.data} == {0, 1} and len(heads.data) == 4
    emb = qe.embed(qks, 0)
    row = qe.attention_row(qks, emb, 2)
    fig = qk_view.attention_row(row)
    assert len(fig.data) == 1 and len(fig.data[0].y) == 6
    row.variant, row.changed_map = "topk:k=1", np.eye(6)
    row.changed = row.changed_map[2]
    assert len(qk_view.attention_row(row).data) == 2
    assert len(qk_view.map_change(row).data) == 2


def page(model: str, variant: str | None = None, **state):
    """The explorer with `model` (and a variant) picked in the sidebar, ten inputs."""
    if variant is not None:
        state["variant_name"] = variant
    return open_page("pages/qk_explorer.py", model, qk_n=10, **state)  # ten inputs keep it quick


@pytest.mark.slow
def test_page_minilm(minilm):
    at = page("minilm")
    ok(at)
    assert len(at.get("plotly_chart")) == 3  # joint scatter, attention row, every head
    at = page("minilm", variant="sliding_window")
    ok(at)
    assert len(at.get("plotly_chart")) == 4  # + the head's map, stock next to the variant
    at.number_input(key="qk_point").set_value(20).run()
    at.selectbox(key="qk_colour").set_value("token_kind").run()
    at.radio(key="qk_dims").set_value(3).run()
    at.number_input(key="qk_head").set_value(5).run()
    ok(at)
    assert "head 5" in at.get("plotly_chart")[0].proto.spec and len(at.get("plotly_chart")) == 4


@pytest.mark.slow
def test_page_digits_vit(digits_vit):
    at = page("digits-vit", qk_layer=2, qk_method="umap")
    ok(at)
    assert len(at.get("plotly_chart")) == 3


def test_a_scatter_of_16k_points_stays_small():
    """Issue 14 item 15: 8192 tokens make 16 384 points; the hover gives up its context, not the figure its size."""
    import plotly.io as pio

    rng = np.random.default_rng(0)
    n = 8192
    words = [f" word{i}" for i in range(n)]
    context = qe.contexts(words[:40]) * (n // 40) + qe.contexts(words[:n % 40])  # contexts() is O(n²): reuse 40
    qks = qe.QKSet(
        model_id="fake", kind="causal", layer=0, q=rng.normal(size=(2, n, 16)), k=rng.normal(size=(2, n, 16)),
        tokens=words, token_kind=["word"] * n, context=context,
        input_index=np.zeros(n, dtype=int), position=np.arange(n), offsets=np.array([0, n]), probs=[None],
        inputs=[], names=["x"], inputs_hash="big")
    emb = qe.embed(qks, 0, "pca", 2)
    fig = qk_view.scatter(emb, "role", selected=3)
    assert len(pio.to_json(fig, validate=False)) < 3_000_000
    assert sum(len(t.x) for t in fig.data if t.name != "selected") == 2 * n
    assert "position 5 · input 0" in qk_view.hover_texts(emb)[5]
