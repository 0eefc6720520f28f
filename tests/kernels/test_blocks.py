"""Block sparsity: computing only the kept key blocks gives exactly what dense attention gives.

Every static mask and score modifier, on sequences (causal and not) and on a ViT grid with CLS,
with grouped-query attention (kv heads expanded as the models do) and key blocks of 4 against
query chunks of 5 rows, so tiles are empty, full and partial. The dense side is written out here:
all N×N scores in float64, the variant's score_mod on the whole grid, its keep mask on the whole
grid, one softmax. Maps and row statistics are checked against their definitions on those
probabilities, so they come from the kept blocks only.
"""

from __future__ import annotations

import math

import pytest
import torch

import kernels.blocks as blocks
from kernels.context import TokenContext
from kernels.core import index_grid
from kernels.maps import MapsSink, token_distance
from kernels.reference import allowed_fn, attention
from kernels.variants import VariantError, parse_variant

STATIC = ["sliding_window:w=3,sinks=2", "strided:l=4", "fixed:l=6,c=2", "dilated_window:w=2,d=2", "star:b=8,q_tokens=4",
          "window_2d:M=2", "window_2d:M=3,shift=true", "neighborhood_2d:k=1"]
SCORE_MODS = ["decay_1d", "manhattan_decay", "gaussian_2d", "gaussian_2d:sigmas=1;3,weights=1;2"]
CONTEXTS = {
    "causal": lambda: TokenContext.sequence(37, causal=True, n_heads=4),
    "bidirectional": lambda: TokenContext.sequence(33, causal=False, n_heads=4),
    "vit": lambda: TokenContext.vit((5, 6), n_prefix=1, n_heads=4),
}
KV_HEADS = 2  # grouped-query attention: 4 query heads share 2 key/value heads


def cases(specs):
    out = []
    for spec in specs:
        for kind, make in CONTEXTS.items():
            try:
                parse_variant(spec).check(make())
            except VariantError:
                continue
            out.append((spec, kind))
    return out


def qkv(ctx, B=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, ctx.n_heads, ctx.n, D, generator=g)
    k, v = (torch.randn(B, KV_HEADS, ctx.n, D, generator=g).repeat_interleave(ctx.n_heads // KV_HEADS, dim=1)
            for _ in range(2))
    return q, k, v


def dense(q, k, v, scale, ctx, variant):
    """out, probs, lse of dense attention in float64: every score, the rules applied to the whole grid."""
    B, H, N, _ = q.shape
    s = q.double() @ k.double().transpose(-1, -2) * scale
    score_mod = variant.score_mod(ctx)
    if score_mod is not None:
        b, h, qi, kj = index_grid(B, H, 0, N, N, "cpu")
        s = score_mod(s, b, h, qi, kj)
    keep = allowed_fn(variant, ctx, None, B, H, N, "cpu")(0, N)
    if keep is not None:
        s = s.masked_fill(~keep, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.where(torch.isneginf(lse)[..., None], 0.0, torch.exp(s - lse[..., None]))
    return p @ v.double(), p, lse


def block_means(p: torch.Tensor, r: int) -> torch.Tensor:
    n = p.shape[-1]
    bins = (torch.arange(n) * min(r, n)) // n
    onehot = torch.nn.functional.one_hot(bins).double()
    return (onehot.T @ p @ onehot) / (onehot.sum(0)[:, None] * onehot.sum(0)[None, :])


@pytest.fixture
def small_blocks(monkeypatch):
    """Key blocks of 4 (and a fresh plan cache) so a 5-row chunk meets empty, full and partial tiles."""
    monkeypatch.setattr(blocks, "KEY_BLOCK", 4)
    blocks.PLANS.clear()
    kept = []
    real = blocks.chunk_plan
    monkeypatch.setattr("kernels.reference.chunk_plan", lambda *a, **kw: kept.append(real(*a, **kw)) or kept[-1])
    yield kept
    blocks.PLANS.clear()


@pytest.mark.parametrize("spec,kind", cases(STATIC + SCORE_MODS + ["full"]))
def test_blocks_equal_dense(spec, kind, small_blocks):
    ctx, variant = CONTEXTS[kind](), parse_variant(spec)
    q, k, v = qkv(ctx)
    maps = MapsSink(2, ctx.n_heads, ctx.n, ctx.n, ctx, pooled=7, device="cpu")
    res = attention(q, k, v, scale=0.4, ctx=ctx, variant=variant, want_probs=True, sinks=(maps,), chunk=5)
    out, p, lse = dense(q, k, v, 0.4, ctx, variant)
    torch.testing.assert_close(res.out.double(), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.probs.double(), p, atol=1e-6, rtol=1e-5)
    dead = torch.isneginf(lse)
    assert torch.equal(res.empty, dead) and torch.equal(torch.isneginf(res.lse), dead)
    torch.testing.assert_close(res.lse.double()[~dead], lse[~dead], atol=1e-5, rtol=1e-5)
    # maps and statistics, by their definitions on the dense probabilities
    torch.testing.assert_close(maps.pooled().double(), block_means(p, 7), atol=1e-6, rtol=1e-5)
    qi, kj = torch.arange(ctx.n)[:, None], torch.arange(ctx.n)[None, :]
    distance = (p * token_distance(ctx, qi, kj).double()).sum(-1)
    expected = {"entropy": torch.special.entr(p).sum(-1), "distance": distance, "sink": p[..., 0], "maxp": p.amax(-1)}
    for name, value in expected.items():
        torch.testing.assert_close(maps.stats[name].double(), value, atol=2e-5, rtol=1e-4, msg=name)
    if spec.partition(":")[0] in {"sliding_window", "dilated_window", "star", "window_2d", "neighborhood_2d"}:
        assert any(plan.kept < 1 for plan in small_blocks)  # empty blocks were really skipped


def test_full_blocks_are_not_masked_and_empty_ones_not_computed(small_blocks):
    """Causal rows of chunk [10, 15) with blocks of 4: keys [0, 8) full, [8, 16) partial, the rest never seen."""
    ctx = TokenContext.sequence(40, causal=True)
    plan_of = allowed_fn(parse_variant("full"), ctx, None, 1, 1, 40, "cpu")
    plan = blocks.chunk_plan(plan_of(10, 15, plan_of.reach(15)), plan_of.reach(15), "cpu")
    assert plan.cols == slice(0, 15) and [(a, b) for a, b, _ in plan.masks] == [(8, 15)]
    window = parse_variant("sliding_window:w=2,sinks=0")
    plan_of = allowed_fn(window, ctx, None, 1, 1, 40, "cpu")
    plan = blocks.chunk_plan(plan_of(20, 25, 25), 25, "cpu")
    assert plan.kv_idx.tolist() == list(range(16, 25)) and plan.kept < 0.5


def test_sparse_work_follows_the_kept_fraction():
    """Scores computed per layer (Σ chunk rows × gathered keys) under sliding_window:w=64,sinks=4 at
    N = 4096: a small fraction of what causal attention computes."""
    blocks.PLANS.clear()
    ctx = TokenContext.sequence(4096, causal=True)

    def work(spec):
        allowed = allowed_fn(parse_variant(spec), ctx, None, 1, 1, 4096, "cpu")
        total = 0
        for q0 in range(0, 4096, 256):
            hi = allowed.reach(q0 + 256)
            total += 256 * blocks.chunk_plan(allowed(q0, q0 + 256, hi), hi, "cpu").width
        return total

    causal, window = work("full"), work("sliding_window:w=64,sinks=4")
    assert window < 0.2 * causal


def test_plans_are_made_once_per_forward_pass(small_blocks):
    ctx = TokenContext.sequence(30, causal=True, n_heads=4)
    variant = parse_variant("sliding_window:w=3,sinks=1")
    q, k, v = qkv(ctx)
    for layer in range(3):  # the layers of one pass share the variant, the context tensors and the mask
        attention(q, k, v, scale=0.3, ctx=ctx.with_layer(layer, 4), variant=variant, chunk=5)
    assert len(small_blocks) == 6  # one plan per chunk, not per chunk and layer


class Padding:
    """Batch item 1 hides its last 6 keys, and its rows 0..2 see nothing at all."""

    def __init__(self, n):
        self.keep = torch.ones(2, 1, n, n, dtype=torch.bool)
        self.keep[1, :, :, n - 6:] = False
        self.keep[1, :, :3] = False

    def rows(self, q0, q1):
        return self.keep[:, :, q0:q1]


@pytest.mark.parametrize("spec,kind", cases(STATIC + ["full"]))
@pytest.mark.parametrize("padded", [False, True])
def test_output_only_path_equals_the_softmax_path(spec, kind, padded, small_blocks):
    """Asked for the output alone, dispatch runs fused SDPA over each chunk's kept keys: the same output."""
    from kernels.dispatch import attend

    ctx, variant = CONTEXTS[kind](), parse_variant(spec)
    q, k, v = qkv(ctx)
    mask = Padding(ctx.n) if padded else None
    fast = attend(q, k, v, scale=0.4, ctx=ctx, variant=variant, model_mask=mask, want_lse=False)
    ref = attention(q, k, v, scale=0.4, ctx=ctx, variant=variant, model_mask=mask)
    assert fast.lse is None and not torch.isnan(fast.out).any()
    torch.testing.assert_close(fast.out, ref.out, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.empty, ref.empty)


def test_the_plan_cache_holds_a_bounded_amount_of_masks(monkeypatch):
    """A dense-ish mask of a long input is worked out again per layer rather than held: same results."""
    ctx = TokenContext.sequence(64, causal=True, n_heads=2)
    variant = parse_variant("strided:l=3")
    q, k, v = qkv(ctx)
    blocks.PLANS.clear()
    cached = attention(q, k, v, scale=0.4, ctx=ctx, variant=variant, chunk=8, want_probs=True)
    monkeypatch.setattr(blocks.PLANS, "max_bytes", 1024)
    blocks.PLANS.clear()
    for _ in range(2):
        capped = attention(q, k, v, scale=0.4, ctx=ctx, variant=variant, chunk=8, want_probs=True)
        torch.testing.assert_close(capped.probs, cached.probs)
    held = sum(blocks._bytes(p) for _, plans in blocks.PLANS._entries.values() for p in plans.values())
    assert held <= 1024


@pytest.mark.parametrize("spec,kind", [("full", "causal"), ("full", "bidirectional"), ("strided:l=4", "causal"),
                                       ("prefix_lm:n=3", "causal"), ("window_2d:M=2", "vit")])
def test_allowed_is_always_four_dimensional(spec, kind):
    """(1|B, 1|H, rows, keys) or None, whatever combination of rules made it (the mask lab indexes it so)."""
    ctx = CONTEXTS[kind]()
    keep = allowed_fn(parse_variant(spec), ctx, None, 1, ctx.n_heads, ctx.n, "cpu")(0, ctx.n)
    assert keep is None if (spec, kind) == ("full", "bidirectional") else keep.dim() == 4
