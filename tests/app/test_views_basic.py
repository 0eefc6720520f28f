"""Views are pure functions of a Trace: checked on synthetic traces."""

from __future__ import annotations

import numpy as np
import pytest

from app.views.head_view import head_heatmap, token_labels
from app.views.model_grid import block_mean, cell_at, model_grid
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
    z, where = np.array(fig.data[0].z, dtype=float), np.array(fig.data[0].customdata)
    for layer in range(3):
        for head in range(2):
            cells = (where[..., 0] == layer) & (where[..., 1] == head)
            assert cells.sum() == 12 * 12
            # each thumbnail is its map scaled to its own max
            probs = tr.attention(layer)[head]
            np.testing.assert_allclose(z[cells].reshape(12, 12), probs / probs.max(), rtol=1e-6)
    assert "synthetic" in fig.layout.title.text and "full" in fig.layout.title.text
    assert cell_at({"customdata": [2, 1]}) == (2, 1) and cell_at({"customdata": [-1, -1]}) is None


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
