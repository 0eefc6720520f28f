"""Tiles of a long trace, recomputed from q, k and the LSE, equal the dense trace's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from analysis.tiles import tile
from models.tracer import trace


@pytest.fixture(scope="module")
def llama(tokenizer):
    return wrap_text(tiny_text_model("llama-gqa"), tokenizer)


@pytest.mark.parametrize("variant,layers,heads", [
    ("full", None, None),
    ("decay_1d:a=1,b=2", None, None),
    ("sliding_window:w=3,sinks=1", [1], [0, 2]),
])
def test_tile_of_long_trace_equals_dense(llama, variant, layers, heads):
    dense = trace(llama, text=TEXT, variant=variant, layers=layers, heads=heads)
    long = trace(llama, text=TEXT, variant=variant, layers=layers, heads=heads, qk=True, dense_limit=4)
    assert "L1_probs" not in long.arrays
    for layer in range(2):
        for head in range(4):
            got = tile(long, layer, head, (3, 11), (0, 9))
            np.testing.assert_allclose(got, dense.attention(layer)[head, 3:11, 0:9], atol=1e-6)


def test_tile_needs_qk(llama):
    long = trace(llama, text=TEXT, dense_limit=4)
    with pytest.raises(ValueError, match="--qk"):
        tile(long, 0, 0, (0, 4), (0, 4))
    with pytest.raises(ValueError, match="within"):
        tile(long, 0, 0, (0, 400), (0, 4))


def test_tiles_honour_the_models_own_attention(llama, monkeypatch):
    """A model with soft-capping and learned sinks: the recorder keeps them, and tiles are recomputed with them."""
    import torch

    import models.inject as inject
    from kernels.native import NativeAttention
    from models.recorder import Recorder

    native = NativeAttention(softcap=0.8, sink_logits=torch.tensor([0.5, -1.0, 2.0, 0.0]))
    real_attend, real_record = inject.attend, Recorder.record
    monkeypatch.setattr(inject, "attend", lambda *a, **kw: real_attend(*a, **kw, native=native))
    monkeypatch.setattr(Recorder, "record", lambda self, *a: real_record(self, *a, native=native))
    dense = trace(llama, text=TEXT)
    long = trace(llama, text=TEXT, qk=True, dense_limit=4)
    assert long.has(0, "softcap") and long.has(0, "sink_logits") and long.has(0, "learned_sink")
    rows = dense.attention(0).sum(-1)
    np.testing.assert_allclose(long.stat(0, "learned_sink"), 1 - rows, atol=1e-5)  # the sinks' share
    assert (rows < 1 - 1e-3).all()
    for head in range(4):
        np.testing.assert_allclose(tile(long, 0, head, (2, 12), (0, 10)), dense.attention(0)[head, 2:12, 0:10],
                                   atol=1e-6)
