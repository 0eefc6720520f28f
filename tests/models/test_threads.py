"""Two sessions sharing one cached model with different variants never see each other's settings."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from models.tracer import trace

VARIANTS = ["full", "sliding_window:w=3,sinks=1"]


def run_concurrently(lm, variants, rounds):
    barrier = threading.Barrier(len(variants))
    results = {v: [] for v in variants}
    errors = []

    def worker(variant):
        try:
            for _ in range(rounds):
                barrier.wait()  # start each round together so the forward passes overlap
                results[variant].append(trace(lm, text=TEXT, variant=variant))
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(v,)) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


@pytest.mark.parametrize("family", ["llama-gqa"])
def test_two_threads_two_variants_one_model(family, tokenizer):
    lm = wrap_text(tiny_text_model(family), tokenizer)
    alone = {v: trace(lm, text=TEXT, variant=v) for v in VARIANTS}
    # the variants differ, so a leak of one thread's setting into the other would show
    assert not np.allclose(alone[VARIANTS[0]].attention(1), alone[VARIANTS[1]].attention(1))
    together = run_concurrently(lm, VARIANTS, rounds=4)
    for v in VARIANTS:
        for tr in together[v]:
            assert tr.variant == alone[v].variant
            np.testing.assert_allclose(tr.logits, alone[v].logits, rtol=1e-6, atol=1e-6)
            for layer in range(tr.n_layers):
                np.testing.assert_allclose(tr.attention(layer), alone[v].attention(layer), atol=1e-7)


@pytest.mark.slow
def test_two_threads_on_smollm(smollm):
    alone = {v: trace(smollm, text=TEXT, variant=v) for v in VARIANTS}
    together = run_concurrently(smollm, VARIANTS, rounds=2)
    for v in VARIANTS:
        for tr in together[v]:
            np.testing.assert_allclose(tr.logits, alone[v].logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(tr.attention(29), alone[v].attention(29), atol=1e-6)
