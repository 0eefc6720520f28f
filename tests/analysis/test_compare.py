"""Comparisons of two traces: the per-head change that discriminates variants, and outputs in words."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from analysis.compare import compare, prediction, total_variation
from models.tracer import trace


def test_total_variation_is_the_mass_that_moved():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(total_variation(p, q), [0.5, 0.0])
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(7), size=5), rng.dirichlet(np.ones(7), size=5)
    brute = [max(abs(sum(p[r, list(s)]) - sum(q[r, list(s)])) for s in _subsets(7)) for r in range(5)]
    np.testing.assert_allclose(total_variation(p, q), brute)  # the largest difference over every key set


def _subsets(n):
    from itertools import chain, combinations

    return chain.from_iterable(combinations(range(n), k) for k in range(n + 1))


@pytest.fixture(scope="module")
def llama(tokenizer):
    return wrap_text(tiny_text_model("llama-gqa"), tokenizer)


def test_compare_names_the_outputs(llama):
    a, b = trace(llama, text=TEXT), trace(llama, text=TEXT, variant="sliding_window:w=2")
    tokenizer = llama.adapter.tokenizer
    cmp = compare(a, b, lambda i: tokenizer.decode([i]))
    top = cmp.output["top_a"]
    assert [t["label"] for t in top] == [tokenizer.decode([t["id"]]) for t in top]
    assert np.all((cmp.moved >= 0) & (cmp.moved <= 1)) and cmp.moved.max() > 0
    assert compare(a, a).moved.max() == 0
    said = prediction(a, lambda i: tokenizer.decode([i]))
    assert said.startswith(f"{a.model_id} · full · next token: “{top[0]['label']}”")


@pytest.mark.slow
def test_the_default_change_ranks_a_narrow_window_above_one_with_sinks(smollm):
    """Issue 14 item 3: on a 1k-token text, sliding_window:w=4 changes smollm2's heads more than
    sliding_window:w=64,sinks=4 in mean per-head change (the app's default metric)."""
    from analysis.quality import PERPLEXITY_TEXT
    from app.views.compare_view import METRICS

    default = next(iter(METRICS))
    text = PERPLEXITY_TEXT.read_text()
    full = trace(smollm, text=text, max_tokens=1000)
    assert full.n == 1000 and full.dense
    narrow = compare(full, trace(smollm, text=text, max_tokens=1000, variant="sliding_window:w=4"))
    sinks = compare(full, trace(smollm, text=text, max_tokens=1000, variant="sliding_window:w=64,sinks=4"))
    a, b = getattr(narrow, default), getattr(sinks, default)
    assert a.mean() > 1.3 * b.mean(), (default, a.mean(), b.mean())
    assert narrow.output["kl"] > sinks.output["kl"]  # the output agrees with the ranking
