"""Per-head metrics of a trace; a long trace recomputes the previous-token score exactly from q, k and the LSE."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from analysis.head_metrics import previous_token, trace_head_metrics, why_no_previous_token
from models.tracer import trace


@pytest.fixture(scope="module")
def llama(tokenizer):
    return wrap_text(tiny_text_model("llama-gqa"), tokenizer)


@pytest.mark.parametrize("variant", ["full", "sliding_window:w=3,sinks=1"])
def test_previous_token_of_a_long_trace_equals_the_dense_one(llama, variant, monkeypatch):
    import analysis.head_metrics as hm

    monkeypatch.setattr(hm, "BAND", 5)  # several bands on a short text
    text = " ".join([TEXT] * 2)
    dense = trace(llama, text=text, variant=variant)
    long = trace(llama, text=text, variant=variant, qk=True, dense_limit=4)
    assert not long.dense and dense.dense
    want = np.stack([np.diagonal(dense.attention(layer), offset=-1, axis1=-2, axis2=-1).mean(-1)
                     for layer in range(dense.n_layers)])
    np.testing.assert_allclose(previous_token(dense), want, rtol=1e-6)
    np.testing.assert_allclose(previous_token(long), want, atol=1e-6)
    assert "previous_token" in trace_head_metrics(long)


def test_a_long_trace_without_qk_says_why_it_has_no_previous_token_score(llama):
    long = trace(llama, text=TEXT, dense_limit=4)
    assert previous_token(long) is None and "previous_token" not in trace_head_metrics(long)
    assert "q and k" in why_no_previous_token(long)
    rows = trace(llama, text=TEXT, variant="topk:k=2", qk=True, dense_limit=4)
    assert "topk" in why_no_previous_token(rows)
