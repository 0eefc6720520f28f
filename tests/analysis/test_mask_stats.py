"""The share of attention a mask keeps, with one denominator: the pairs the model itself computes."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.mask_stats import blocks_kept, kept


def test_kept_counts_the_causal_triangle_for_a_decoder():
    n = 10
    causal = np.tril(np.ones((1, n, n), dtype=bool))
    assert kept(causal, causal=True) == 1.0  # full attention on a decoder keeps everything it computes
    assert kept(np.ones((1, n, n), dtype=bool), causal=False) == 1.0
    window = causal & ~np.tril(np.ones((n, n), dtype=bool), k=-3)  # j ≥ i − 2
    assert kept(window, causal=True) == window.sum() / (n * (n + 1) / 2)


def test_blocks_kept_is_the_brute_force_count():
    rng = np.random.default_rng(0)
    keep = np.tril(rng.random((2, 70, 70)) < 0.02)
    for block in (8, 64):
        nb = -(-70 // block)
        tiles = [[keep[h, i * block:(i + 1) * block, j * block:(j + 1) * block].any() for j in range(nb)
                  for i in range(nb) if j <= i] for h in range(2)]
        assert blocks_kept(keep, block, causal=True) == pytest.approx(np.mean([np.mean(t) for t in tiles]))
