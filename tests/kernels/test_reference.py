"""The reference path against brute-force attention."""

from __future__ import annotations

import math

import pytest
import torch
from sink_util import wide_sink

from kernels.context import TokenContext
from kernels.dispatch import attend
from kernels.reference import attention
from kernels.variants import parse_variant

FULL = parse_variant("full")


def brute_force(q, k, v, scale, keep):
    """Loop over rows in float64: softmax over the kept keys, zero for a row with none."""
    B, H, N, _ = q.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    probs = torch.zeros(B, H, N, k.shape[2], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                idx = [j for j in range(k.shape[2]) if keep[b, h, i, j]]
                if not idx:
                    continue
                s = torch.tensor(
                    [float(q[b, h, i].double() @ k[b, h, j].double()) * scale for j in idx], dtype=torch.float64
                )
                p = torch.softmax(s, 0)
                probs[b, h, i, idx] = p.double()
                out[b, h, i] = p @ v[b, h, idx].double()
    return out, probs


def rand_qkv(B=2, H=3, N=11, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 256])
def test_full_matches_brute_force(causal, chunk):
    q, k, v = rand_qkv()
    ctx = TokenContext.sequence(11, causal=causal)
    res = attention(q, k, v, scale=0.3, ctx=ctx, variant=FULL, want_probs=True, chunk=chunk)
    keep = torch.ones(2, 3, 11, 11, dtype=torch.bool)
    if causal:
        keep &= torch.ones(11, 11, dtype=torch.bool).tril()
    out, probs = brute_force(q, k, v, 0.3, keep)
    torch.testing.assert_close(res.out.double(), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.probs.double(), probs, atol=1e-6, rtol=1e-5)
    s = (q @ k.transpose(-1, -2)).double() * 0.3
    lse = torch.logsumexp(s.masked_fill(~keep, -math.inf), -1)
    torch.testing.assert_close(res.lse.double(), lse, atol=1e-5, rtol=1e-5)


class PaddingMask:
    """A model mask hiding the keys of padding positions, like a padded batch item."""

    def __init__(self, valid):  # valid: bool (B, Nk)
        self.valid = valid

    def rows(self, q0, q1):
        return self.valid[:, None, None, :].expand(-1, 1, q1 - q0, -1)


def test_all_masked_row_is_zero_and_flagged():
    q, k, v = rand_qkv(B=2, N=6)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1] = False  # batch item 1: every key is padding
    res = attention(
        q,
        k,
        v,
        scale=0.5,
        ctx=TokenContext.sequence(6, causal=False),
        variant=FULL,
        model_mask=PaddingMask(valid),
        want_probs=True,
    )
    assert not torch.isnan(res.out).any() and not torch.isnan(res.probs).any()
    assert (res.out[1] == 0).all() and (res.probs[1] == 0).all()
    assert res.empty[1].all() and not res.empty[0].any()
    assert torch.isneginf(res.lse[1]).all()


def test_sinks_see_every_chunk_once():
    q, k, v = rand_qkv(N=10)
    seen = []
    attention(
        q,
        k,
        v,
        scale=0.5,
        ctx=TokenContext.sequence(10, causal=True),
        variant=FULL,
        sinks=(wide_sink(lambda q0, q1, p, s: seen.append((q0, q1, p.shape, bool(torch.isneginf(s).any())))),),
        chunk=4,
    )
    assert [(a, b) for a, b, *_ in seen] == [(0, 4), (4, 8), (8, 10)]
    assert seen[0][2] == (2, 3, 4, 10) and seen[0][3]  # causal keys are -inf in the scores


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_fast_path_agrees(causal):
    q, k, v = rand_qkv()
    ctx = TokenContext.sequence(11, causal=causal)
    fast = attend(q, k, v, scale=0.3, ctx=ctx, variant=FULL, want_lse=False)
    ref = attention(q, k, v, scale=0.3, ctx=ctx, variant=FULL)
    assert fast.lse is None
    torch.testing.assert_close(fast.out, ref.out, atol=1e-5, rtol=1e-5)


def test_sdpa_fast_path_zeroes_empty_rows():
    q, k, v = rand_qkv(B=2, N=6)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1] = False
    fast = attend(
        q,
        k,
        v,
        scale=0.3,
        ctx=TokenContext.sequence(6, causal=False),
        variant=FULL,
        model_mask=PaddingMask(valid),
        want_lse=False,
    )
    assert not torch.isnan(fast.out).any() and (fast.out[1] == 0).all() and fast.empty[1].all()


@pytest.mark.parametrize("spec", ["sliding_window:w=3,sinks=2", "dilated_window:w=2,d=3", "star:b=8,q_tokens=4"])
def test_key_skipping_changes_nothing(spec, monkeypatch):
    """Chunks that compute only their kept key blocks give exactly what whole rows give."""
    import kernels.blocks as blocks
    from kernels.maps import MapsSink

    q, k, v = rand_qkv(B=1, H=2, N=40)
    ctx = TokenContext.sequence(40, causal=True, n_heads=2)
    variant = parse_variant(spec)
    monkeypatch.setattr(blocks, "KEY_BLOCK", 4)

    def run():
        blocks.PLANS.clear()
        sink = MapsSink(1, 2, 40, 40, ctx, pooled=8, device="cpu")
        res = attention(q, k, v, scale=0.3, ctx=ctx, variant=variant, want_probs=True, sinks=(sink,), chunk=4)
        return res, sink

    kept = []
    real = blocks.chunk_plan
    monkeypatch.setattr(blocks, "chunk_plan", lambda *a, **kw: kept.append(real(*a, **kw)) or kept[-1])
    monkeypatch.setattr("kernels.reference.chunk_plan", blocks.chunk_plan)
    skipped, skipped_maps = run()
    assert any(p.kept < 1 for p in kept)  # the sparse path really ran
    monkeypatch.setattr(blocks, "GATHER_BELOW", -1.0)  # every key block computed, the empty ones masked
    dense, dense_maps = run()
    torch.testing.assert_close(skipped.out, dense.out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(skipped.probs, dense.probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(skipped.lse, dense.lse, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(skipped_maps.pooled(), dense_maps.pooled(), atol=1e-6, rtol=1e-6)


def test_key_skipping_with_a_score_mod_keeps_true_key_indices():
    """decay_1d's bias needs each gathered key's real position."""
    from kernels.variants.base import Variant

    class WindowedDecay(Variant):
        name, family, applies_to = "windowed_decay", "test", frozenset({"causal"})

        def mask_mod(self, ctx):
            return lambda b, h, qi, kj: (qi - kj).abs() <= 2

        def score_mod(self, ctx):
            return lambda s, b, h, qi, kj: s - 0.5 * (qi - kj).abs()

    q, k, v = rand_qkv(B=1, H=1, N=30)
    res = attention(q, k, v, scale=0.3, ctx=TokenContext.sequence(30, causal=True), variant=WindowedDecay(),
                    want_probs=True, chunk=3)
    keep = torch.zeros(1, 1, 30, 30, dtype=torch.bool)
    s = (q @ k.transpose(-1, -2)).double() * 0.3
    for i in range(30):
        for j in range(max(0, i - 2), i + 1):
            keep[0, 0, i, j] = True
            s[0, 0, i, j] -= 0.5 * abs(i - j)
    expected = torch.softmax(s.masked_fill(~keep, -math.inf), -1)
    torch.testing.assert_close(res.probs.double(), expected, atol=1e-6, rtol=1e-5)
