"""Pooled maps, row statistics and exact tiles against their dense definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.context import TokenContext
from kernels.maps import MapsSink, exact_tile, pool_bins
from kernels.reference import attention
from kernels.variants import parse_variant

FULL = parse_variant("full")


def dense_and_maps(ctx, n, r, seed=0, chunk=5):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 3, n, 8, generator=g) for _ in range(3))
    sink = MapsSink(1, 3, n, n, ctx, pooled=r, device="cpu")
    res = attention(q, k, v, scale=0.4, ctx=ctx, variant=FULL, want_probs=True, sinks=(sink,), chunk=chunk)
    return q, k, res, sink


def block_means(p: np.ndarray, r: int) -> np.ndarray:
    n = p.shape[-1]
    rb = [(i * min(r, n)) // n for i in range(n)]
    R = max(rb) + 1
    out = np.zeros(p.shape[:-2] + (R, R))
    for a in range(R):
        for b in range(R):
            rows = [i for i in range(n) if rb[i] == a]
            cols = [j for j in range(n) if rb[j] == b]
            out[..., a, b] = p[..., rows, :][..., :, cols].mean((-1, -2))
    return out


@pytest.mark.parametrize("n,r", [(13, 4), (16, 4), (10, 32), (23, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_pooled_is_block_mean(n, r, causal):
    _, _, res, sink = dense_and_maps(TokenContext.sequence(n, causal=causal), n, r)
    np.testing.assert_allclose(sink.pooled().numpy(), block_means(res.probs.numpy(), r), atol=1e-6)


def test_row_stats_match_dense_definitions_sequence():
    n = 17
    _, _, res, sink = dense_and_maps(TokenContext.sequence(n, causal=True), n, 4)
    p = res.probs.double()
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)
    dist = torch.tensor([[abs(i - j) for j in range(n)] for i in range(n)], dtype=torch.float64)
    torch.testing.assert_close(sink.stats["entropy"].double(), ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sink.stats["distance"].double(), (p * dist).sum(-1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sink.stats["sink"].double(), p[..., 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sink.stats["maxp"].double(), p.amax(-1), atol=1e-6, rtol=0)


def test_distance_on_a_vit_grid_uses_cells_and_ignores_cls():
    ctx = TokenContext.vit((3, 4), n_prefix=1)
    n = ctx.n
    _, _, res, sink = dense_and_maps(ctx, n, 4)
    p = res.probs.double()
    dist = torch.zeros(n, n, dtype=torch.float64)
    for i in range(1, n):
        for j in range(1, n):
            (ri, ci), (rj, cj) = divmod(i - 1, 4), divmod(j - 1, 4)
            dist[i, j] = ((ri - rj) ** 2 + (ci - cj) ** 2) ** 0.5
    torch.testing.assert_close(sink.stats["distance"].double(), (p * dist).sum(-1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_exact_tile_equals_dense_slice(causal):
    n = 21
    q, k, res, _ = dense_and_maps(TokenContext.sequence(n, causal=causal), n, 4)
    tile = exact_tile(q[0], k[0], res.lse[0], (5, 12), (3, 17), scale=0.4,
                      ctx=TokenContext.sequence(n, causal=causal), variant=FULL)
    torch.testing.assert_close(tile, res.probs[0, :, 5:12, 3:17], atol=1e-6, rtol=1e-5)


def test_pool_bins():
    assert pool_bins(10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert pool_bins(3, 256).tolist() == [0, 1, 2]


def test_long_trace_keeps_pooled_maps_and_no_dense(tokenizer):
    """Above the dense limit a trace holds pooled maps equal to the block means of the dense trace."""
    from tiny import TEXT, tiny_text_model, wrap_text

    from models.tracer import trace

    lm = wrap_text(tiny_text_model("llama-gqa"), tokenizer)
    dense = trace(lm, text=TEXT)
    long = trace(lm, text=TEXT, dense_limit=4)
    assert "L0_probs" not in long.arrays and long.arrays["L1_pooled"].shape == (4, long.n, long.n)
    np.testing.assert_allclose(long.arrays["L1_pooled"], dense.attention(1), atol=1e-6)
    for name in ("entropy", "distance", "sink", "maxp"):
        np.testing.assert_allclose(long.arrays[f"L0_{name}"], dense.arrays[f"L0_{name}"], atol=1e-6)
    np.testing.assert_allclose(long.logits, dense.logits, rtol=1e-5, atol=1e-5)
