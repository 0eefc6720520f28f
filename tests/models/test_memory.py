"""The memory guard: estimates before running, pooled maps or a refusal over the budget."""

from __future__ import annotations

import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from models.loaded import InputError
from models.memory import estimate_bytes
from models.tracer import trace

LONG = " ".join([TEXT] * 30)  # ~450 tokens: more than the 256×256 pooled maps


@pytest.fixture(scope="module")
def llama(tokenizer):
    lm = wrap_text(tiny_text_model("llama-gqa"), tokenizer)
    lm.max_tokens = 4096  # rotary positions extend past the tiny config's 128
    return lm


def test_estimate_grows_with_dense_maps_and_qk(llama):
    n = 500
    pooled = estimate_bytes(llama, n, dense=False, qk=False)
    dense = estimate_bytes(llama, n, dense=True, qk=False)
    assert dense - pooled == llama.n_layers * llama.n_heads * (n * n - 256 * 256) * 4
    assert estimate_bytes(llama, n, dense=False, qk=True) > pooled


def test_over_budget_switches_to_pooled_maps(llama, monkeypatch):
    n = len(llama.encode_text(LONG).tokens)
    between = (estimate_bytes(llama, n, dense=True, qk=False) + estimate_bytes(llama, n, dense=False, qk=False)) // 2
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", str(between / 1024**3))
    tr = trace(llama, text=LONG)
    assert not tr.dense and "L0_pooled" in tr.arrays
    assert any("kept pooled maps instead" in note for note in tr.notes)


def test_far_over_budget_is_refused_with_the_estimate(llama, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "0.000001")
    with pytest.raises(InputError, match=r"needs about [\d.]+ GB \(.*\) but the memory budget is"):
        trace(llama, text=TEXT)
