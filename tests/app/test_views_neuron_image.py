"""Neuron view and image view builders: on hand-built traces and on tiny random models."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import tiny

from analysis.rollout import grid_rollout
from app.views import image_view as iv
from app.views import neuron_view as nv
from models.trace import Trace


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def text_trace(kind="bidirectional", n=7, h=3, d=8, layers=2, seed=0, qk=True):
    """q, k random; probs = softmax(q·kᵀ·scale) (causal mask for a causal trace), as a model would record."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in range(layers):
        q, k = rng.normal(size=(h, n, d)), rng.normal(size=(h, n, d))
        s = q @ k.transpose(0, 2, 1) * d**-0.5
        if kind == "causal":
            s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
        arrays[f"L{layer}_probs"] = softmax(s).astype(np.float32)
        if qk:
            arrays[f"L{layer}_q"], arrays[f"L{layer}_k"] = q.astype(np.float32), k.astype(np.float32)
    tokens = ["[CLS]", *[f"w{i}" for i in range(n - 2)], "[SEP]"]
    return Trace(model_id="fake", kind=kind, variant="full", tokens=tokens, token_ids=list(range(n)),
                 special=[t.startswith("[") for t in tokens], n_layers=layers, n_heads=h, input={"type": "text"},
                 arrays=arrays)


def vit_trace(grid=(2, 3), image_hw=(10, 15), h=2, layers=2, seed=0):
    rng = np.random.default_rng(seed)
    n = 1 + grid[0] * grid[1]
    arrays = {f"L{layer}_probs": softmax(rng.normal(size=(h, n, n)) * 2).astype(np.float32) for layer in range(layers)}
    image = rng.integers(0, 255, (*image_hw, 3), dtype=np.uint8)
    return Trace(model_id="fake-vit", kind="vit", variant="full", tokens=["CLS", *[f"p{i}" for i in range(n - 1)]],
                 token_ids=list(range(n)), special=[True] + [False] * (n - 1), n_layers=layers, n_heads=h,
                 input={"type": "image"}, arrays=arrays, grid=list(grid), image=image)


def assert_recomputed_softmax_matches(tr):
    for layer in range(tr.n_layers):
        for head in range(tr.n_heads):
            for i in range(tr.n):
                row = nv.neuron_row(tr, layer, head, i)
                np.testing.assert_allclose(row.softmax, tr.attention(layer)[head, i], atol=1e-5)
                assert row.matches()
                seen = np.isfinite(row.scores)  # q∘k sums to the score wherever the key is not masked
                np.testing.assert_allclose(row.scores[seen], row.qk.sum(1)[seen] * row.scale)
                if tr.kind == "causal":
                    assert np.isneginf(row.scores[i + 1:]).all() and (row.softmax[i + 1:] == 0).all()


# -- neuron view, hand-built traces ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_neuron_softmax_matches_synthetic(kind):
    assert_recomputed_softmax_matches(text_trace(kind))


def test_neuron_figure_panels_share_the_key_axis():
    tr = text_trace("causal")
    fig = nv.neuron_figure(tr, 1, 2, 4)
    assert isinstance(fig, go.Figure)
    kinds = [t.type for t in fig.data]
    assert kinds == ["heatmap", "heatmap", "heatmap", "heatmap", "bar", "bar", "scatter"]
    q_strip, _, keys, prod, score, soft, recorded = fig.data
    labels = [f"{i} {t}" for i, t in enumerate(tr.tokens)]
    assert np.asarray(q_strip.z).shape == (1, 8) and list(q_strip.y) == [labels[4]]
    assert np.asarray(keys.z).shape == (7, 8) and list(keys.y) == labels
    for t in (prod, score, soft, recorded):
        assert list(t.y) == labels
    np.testing.assert_allclose(prod.z, tr.arrays["L1_q"][2, 4][None] * tr.arrays["L1_k"][2], rtol=1e-6)
    np.testing.assert_allclose(soft.x, tr.attention(1)[2, 4], atol=1e-6)
    assert list(score.text[5:]) == ["masked"] * 2  # keys after the query, under the causal mask
    # every key panel matches the first key axis; the diverging scales are centred at 0
    assert {fig.layout[f"yaxis{i}"].matches for i in (4, 5, 6)} == {"y3"}
    assert fig.layout.coloraxis.cmid == 0 and fig.layout.coloraxis2.cmid == 0
    assert fig.layout.coloraxis2.cmin == -fig.layout.coloraxis2.cmax
    assert "layer 1 · head 2" in fig.layout.title.text
    assert any("matches the recorded" in a.text for a in fig.layout.annotations)


def test_neuron_without_qk_is_a_clear_error():
    with pytest.raises(ValueError, match="qk=True"):
        nv.neuron_figure(text_trace(qk=False), 0, 0, 0)
    tr = text_trace()
    for bad in ((2, 0, 0), (0, 3, 0), (0, 0, 7)):
        with pytest.raises(ValueError, match="does not exist"):
            nv.neuron_row(tr, *bad)


def test_neuron_flags_a_variant_and_keeps_top_keys():
    tr = text_trace("bidirectional", n=12)
    p = tr.arrays["L0_probs"]
    p[:, :, 3:] = 0  # a variant that masks keys ≥ 3
    p /= p.sum(-1, keepdims=True)
    tr.variant = "masked"
    row = nv.neuron_row(tr, 0, 1, 9)
    assert not row.matches() and row.max_diff > 1e-3
    assert nv.check_text(row, tr.variant).endswith("the variant masked changes them")
    # under `full`, a difference comes from the model's own attention (a window, soft cap, ALiBi), said so
    assert nv.check_text(row, "full", "sliding window 3").endswith(
        "the model's own attention here (sliding window 3) changes them")
    keys = nv.shown_keys(row, max_keys=5)
    assert len(keys) == 5 and 9 in keys and (np.diff(keys) > 0).all()
    fig = nv.neuron_figure(tr, 0, 1, 9, max_keys=5)
    assert len(fig.data[2].y) == 5 and "top 5 of 12 keys" in fig.layout.title.text
    no_dense = text_trace()
    no_dense.arrays = {k: v for k, v in no_dense.arrays.items() if "probs" not in k}
    row = nv.neuron_row(no_dense, 0, 0, 1)
    assert row.recorded is None and row.matches() is None
    assert len(nv.neuron_figure(no_dense, 0, 0, 1).data) == 6  # no recorded markers


def test_neuron_uses_the_recorded_scale():
    tr = text_trace()
    tr.arrays["L0_scale"] = np.float32(0.5)
    assert nv.neuron_row(tr, 0, 0, 0).scale == 0.5
    assert nv.neuron_row(tr, 1, 0, 0).scale == pytest.approx(8**-0.5)


# -- neuron view, tiny models ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
def test_neuron_softmax_matches_tiny_models(family, tokenizer):
    from models.tracer import trace

    tr = trace(tiny.wrap_text(tiny.tiny_text_model(family), tokenizer), text=tiny.TEXT, qk=True)
    assert tr.kind == ("causal" if family == "llama-gqa" else "bidirectional")
    assert tr.arrays["L0_k"].shape[0] == tr.n_heads  # key heads expanded for GQA
    assert_recomputed_softmax_matches(tr)
    fig = nv.neuron_figure(tr, 1, 3, tr.n - 2)
    assert len(fig.data[2].y) == tr.n and fig.layout.meta["max_diff"] < 1e-4


# -- image view, hand-built traces -------------------------------------------------------------------------
def test_patch_edges_follow_the_nearest_neighbour_rule():
    assert iv.patch_edges(10, 2).tolist() == [-0.5, 4.5, 9.5]
    edges = iv.patch_edges(7, 3)  # sizes the grid does not divide: pixel i is in patch ⌊i·3/7⌋
    for i in range(7):
        assert edges[(i * 3) // 7] < i < edges[(i * 3) // 7 + 1]


def test_attention_overlay_shapes_values_and_marker():
    tr = vit_trace()
    grid = iv.attention_grid(tr, 1, (1, 2))
    np.testing.assert_allclose(grid, tr.attention(1)[:, 1 + 5, 1:].reshape(2, 2, 3))
    fig = iv.attention_overlay(tr, 1, (1, 2))
    images = [t for t in fig.data if t.type == "image"]
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(maps) == tr.n_heads + 1 and len(images) == len(maps) + 1  # the image alone, each head, the mean
    for img, m in zip(images, maps):
        assert np.asarray(img.z).shape == tr.image.shape
        assert np.asarray(m.z).shape == (2, 3)  # one cell per patch, laid over its pixels
        assert list(m.x) == [-0.5, 4.5, 9.5, 14.5] and list(m.y) == [-0.5, 4.5, 9.5]
        assert m.opacity == 1  # by default the colours are exactly the colour bar's
    assert iv.attention_overlay(tr, 1, (1, 2), opacity=0.4).data[2].opacity == 0.4
    np.testing.assert_allclose(maps[0].z, grid[0], rtol=1e-6)
    np.testing.assert_allclose(maps[-1].z, grid.mean(0), rtol=1e-6)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == tr.n_heads + 1
    r = rects[0]  # patch (1, 2) of a 2×3 grid on a 10×15 image: rows 5..9, columns 10..14
    assert (r.x0, r.x1, r.y0, r.y1) == (9.5, 14.5, 4.5, 9.5)
    assert iv.cell_at(tr, 12, 7) == (1, 2) and iv.cell_at(tr, 0, 0) == (0, 0)
    assert tuple(maps[0].customdata[1][2]) == (1, 2)  # a click on a cell gives its patch
    assert iv.special_mass(tr, 1, (1, 2))[0] == pytest.approx(tr.attention(1)[0, 6, 0])


def test_cls_query_mean_only_and_rollout():
    tr = vit_trace(grid=(3, 2), image_hw=(7, 8))
    fig = iv.attention_overlay(tr, 0, "cls", per_head=False)
    assert [t.type for t in fig.data] == ["image", "image", "heatmap"]
    assert not fig.layout.shapes  # CLS has no patch to outline
    np.testing.assert_allclose(fig.data[2].z, tr.attention(0)[:, 0, 1:].mean(0).reshape(3, 2), rtol=1e-6)
    assert iv.query_token(tr, "cls") == 0 and iv.query_token(tr, (2, 1)) == 6 and iv.query_patch(tr, 3) == (1, 0)
    roll = iv.rollout_overlay(tr, (0, 1), residual=0.3)
    np.testing.assert_allclose(roll.data[2].z, grid_rollout(tr, 2, residual=0.3), rtol=1e-6)
    assert len(roll.layout.shapes) == 1
    with pytest.raises(ValueError, match="outside"):
        iv.query_token(tr, (3, 0))
    with pytest.raises(ValueError, match="not a vision model"):
        iv.attention_overlay(text_trace(), 0)


# -- image view, a tiny ViT --------------------------------------------------------------------------------
def test_image_view_tiny_vit():
    from models.tracer import trace

    tr = trace(tiny.wrap_vit(tiny.tiny_vit()), image=tiny.sample_image())
    assert tr.image is not None and tr.grid == [4, 4]
    h, w = tr.image.shape[:2]
    fig = iv.attention_overlay(tr, 1, (3, 0))
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(maps) == tr.n_heads + 1 and all(np.asarray(m.z).shape == (4, 4) for m in maps)
    r = fig.layout.shapes[0]
    assert (r.x0, r.x1) == (-0.5, w / 4 - 0.5) and (r.y0, r.y1) == (3 * h / 4 - 0.5, h - 0.5)
    roll = iv.rollout_overlay(tr)
    assert np.asarray(roll.data[2].z).shape == (4, 4) and roll.data[2].x[-1] == w - 0.5
    assert grid_rollout(tr).sum() < 1  # part of the CLS row stays on CLS itself
