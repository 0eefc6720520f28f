"""Views are pure functions of a Trace: checked on synthetic traces."""

from __future__ import annotations

import numpy as np
import pytest

from app.views.head_view import head_heatmap, token_labels
from app.views.model_grid import DRAW_MAX, block_mean, cell_at, display_maps, model_grid, tile_spans
from models.trace import Trace


def synthetic_trace(n=12, layers=3, heads=2, seed=0) -> Trace:
    rng = np.random.default_rng(seed)
    arrays = {}
    for layer in range(layers):
        s = rng.normal(size=(heads, n, n))
        p = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
        arrays[f"L{layer}_probs"] = p.astype(np.float32)
    arrays["logits"] = rng.normal(size=(1, 10)).astype(np.float32)
    return Trace(model_id="synthetic", kind="bidirectional", variant="full", tokens=[f"t{i}" for i in range(n)],
                 token_ids=list(range(n)), special=[False] * n, n_layers=layers, n_heads=heads,
                 input={"type": "text", "text": "x", "sha256": "0"}, arrays=arrays)


def test_block_mean_is_tile_average():
    a = np.random.default_rng(1).random((2, 10, 7))
    b = block_mean(a, 4)
    assert b.shape == (2, 4, 4)
    # rows 0..2 (10*0/4.. ) fall in bin 0: indices i with i*4//10 == 0 -> 0,1,2; cols j*4//7 == 0 -> 0,1
    np.testing.assert_allclose(b[:, 0, 0], a[:, 0:3, 0:2].mean((1, 2)))
    np.testing.assert_allclose(b.mean(), a.mean(), rtol=0.2)
    np.testing.assert_allclose(block_mean(a, 100), a)  # no pooling when the map is small


def test_model_grid_places_every_head():
    tr = synthetic_trace()
    fig = model_grid(tr)
    z = np.array(fig.data[0].z, dtype=float)
    marks = fig.data[1]  # one invisible marker per thumbnail, for hover and clicks
    assert sorted(map(tuple, np.asarray(marks.customdata).tolist())) == [(i, j) for i in range(3) for j in range(2)]
    for (layer, head), x, y in zip(np.asarray(marks.customdata), marks.x, marks.y):
        r0, c0 = int(y - (12 - 1) / 2), int(x - (12 - 1) / 2)  # the marker sits on its thumbnail's centre
        probs = tr.attention(layer)[head]
        # each thumbnail is its map scaled to its own max, in 1..255 (0 is the gap between thumbnails)
        np.testing.assert_allclose((z[r0:r0 + 12, c0:c0 + 12] - 1) / 254, probs / probs.max(), atol=0.5 / 254)
    assert z.min() == 0 and z.max() == 255 and fig.data[0].zmax == 255
    assert "synthetic" in fig.layout.title.text and "full" in fig.layout.title.text
    assert cell_at({"customdata": [2, 1]}) == (2, 1) and cell_at({"x": 3}) is None and cell_at(None) is None


def test_grid_and_maps_stay_small_for_any_model_and_length():
    """Issue 14 item 15: what a view sends to the browser is bounded whatever L, H or N."""
    import plotly.io as pio

    big = synthetic_trace(n=700, layers=32, heads=32)
    grid = model_grid(big)
    assert len(pio.to_json(grid, validate=False)) < 1_000_000
    maps, spans = display_maps(big, 0)
    assert maps.shape == (32, DRAW_MAX, DRAW_MAX) and maps.dtype == np.float32
    assert spans[0] == (0, 2) and spans[-1][1] == 700  # each cell's token range: position i in cell ⌊i·512/700⌋
    widths = np.array([b - a for a, b in spans])
    np.testing.assert_allclose((maps[3] * widths).sum(-1), 1.0, rtol=1e-5)  # tile means of rows that sum to 1
    fig = head_heatmap(big, 0, 3)
    assert len(pio.to_json(fig, validate=False)) < 2_000_000
    assert fig.layout.yaxis.ticktext[-1].isdigit() and int(fig.layout.yaxis.ticktext[-1]) > 512  # positions


def test_block_mean_averages_the_tiles_of_tile_spans():
    a = np.random.default_rng(2).random((3, 700, 700)).astype(np.float32)
    spans = tile_spans(700, 512)
    pooled = block_mean(a, 512)
    for i in (0, 17, 511):
        (r0, r1), (c0, c1) = spans[i], spans[(i * 7) % 512]
        np.testing.assert_allclose(pooled[:, i, (i * 7) % 512], a[:, r0:r1, c0:c1].mean((1, 2)), rtol=1e-5)
    assert [b - a for a, b in tile_spans(10, 4)] == [3, 2, 3, 2]  # position i in tile ⌊i·4/10⌋


def test_head_heatmap_labels_and_values():
    tr = synthetic_trace()
    fig = head_heatmap(tr, 1, 1)
    np.testing.assert_array_equal(np.array(fig.data[0].z), tr.attention(1)[1])
    assert list(fig.data[0].x) == token_labels(tr.tokens)
    assert "layer 1 · head 1" in fig.layout.title.text
    with pytest.raises(ValueError, match="does not exist"):
        head_heatmap(tr, 5, 0)


def test_token_labels_unique_and_clipped():
    labels = token_labels(["a", "a", "x" * 40])
    assert len(set(labels)) == 3 and labels[2].endswith("…") and len(labels[2]) <= 17


def test_token_lines_have_a_colour_key_per_head_and_downloads_name_them():
    from app.export_buttons import _stem
    from app.views.head_view import HEAD_COLOURS, token_lines

    fig = token_lines(synthetic_trace(), 1, [0, 1], threshold=0.9)  # few lines: some heads may have none
    keys = [t for t in fig.data if t.showlegend is not False and t.name and t.name.startswith("head ")]
    assert [(t.name, t.line.color) for t in keys] == [("head 0", HEAD_COLOURS[0]), ("head 1", HEAD_COLOURS[1])]
    assert fig.layout.showlegend
    assert _stem("lines", {"layer": 1, "head": "0+1", "query": None}) == "lines_L1_H0_1"
