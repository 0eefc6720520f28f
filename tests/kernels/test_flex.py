"""The FlexAttention adapter: masks through create_mask, flex_attention vs the reference, snippets."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

import kernels.flex as flex
from kernels.context import TokenContext
from kernels.flex import dense_mask, flex_attention, flex_snippet
from kernels.reference import allowed_fn, attention, index_grid
from kernels.variants import VariantError, parse_variant

VIT_CTXS = [TokenContext.vit((3, 4), n_prefix=1, n_heads=2), TokenContext.vit((5, 5), n_prefix=2, n_heads=2)]
SEQ_CTXS = [TokenContext.sequence(13, causal=True, n_heads=2), TokenContext.sequence(21, causal=False, n_heads=2)]

ONE_D_MASKS = ["sliding_window:w=2,sinks=1", "sliding_window", "strided", "strided:l=3", "fixed", "fixed:l=4,c=2",
               "dilated_window:w=3,d=2", "dilated_window:w=1,d=5"]
GRID_MASKS = ["window_2d:M=2", "window_2d:M=3,shift=true", "window_2d:M=2,shift=true", "neighborhood_2d:k=1",
              "neighborhood_2d"]
CAUSAL_MASKS = ["star", "star:b=3,q_tokens=4"]
SCORE_MODS_1D = ["decay_1d", "decay_1d:a=1,b=2"]
SCORE_MODS_2D = ["manhattan_decay", "gaussian_2d:sigma=1.5,lam=2", "gaussian_2d:sigmas=1;3,weights=2;1"]


def cases():
    for ctx in VIT_CTXS + SEQ_CTXS:
        for spec in ONE_D_MASKS + SCORE_MODS_1D + ["full"]:
            yield spec, ctx
    for ctx in VIT_CTXS:
        for spec in GRID_MASKS + SCORE_MODS_2D:
            yield spec, ctx
    for spec in CAUSAL_MASKS:
        yield spec, SEQ_CTXS[0]


CASES = list(cases())
IDS = [f"{spec}-{ctx.kind}{ctx.n}" for spec, ctx in CASES]


@pytest.mark.parametrize("spec, ctx", CASES, ids=IDS)
def test_dense_mask_equals_reference_allowed(spec, ctx):
    """create_mask vmaps the mask_mod over scalar indices; the reference broadcasts index tensors."""
    variant = parse_variant(spec)
    keep = allowed_fn(variant, ctx, None, 1, 1, ctx.n, "cpu")(0, ctx.n)
    expected = torch.ones(ctx.n, ctx.n, dtype=torch.bool) if keep is None else keep.expand(1, 1, ctx.n, ctx.n)[0, 0]
    mask = dense_mask(variant, ctx)
    assert mask.shape == (1, ctx.n, ctx.n) and mask.dtype == torch.bool
    assert torch.equal(mask[0], expected)
    assert dense_mask(variant, ctx, n_heads=3).shape == (3, ctx.n, ctx.n)


def qkv(ctx, B=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, ctx.n_heads, ctx.n, D, generator=g) for _ in range(3))


FLEX_CASES = [
    ("sliding_window:w=3,sinks=2", SEQ_CTXS[0]),
    ("dilated_window:w=2,d=3", SEQ_CTXS[1]),
    ("star:b=4,q_tokens=3", SEQ_CTXS[0]),
    ("window_2d:M=2,shift=true", VIT_CTXS[1]),
    ("neighborhood_2d:k=1", VIT_CTXS[0]),
    ("decay_1d", SEQ_CTXS[0]),
    ("decay_1d:a=1,b=2", VIT_CTXS[0]),
    ("manhattan_decay", VIT_CTXS[1]),
    ("gaussian_2d:sigmas=1;3,weights=2;1", VIT_CTXS[1]),
    ("full", SEQ_CTXS[1]),
]


@pytest.mark.parametrize("spec, ctx", FLEX_CASES, ids=[f"{s}-{c.kind}" for s, c in FLEX_CASES])
def test_flex_attention_equals_reference(spec, ctx):
    variant = parse_variant(spec)
    q, k, v = qkv(ctx)
    ref = attention(q, k, v, scale=0.35, ctx=ctx, variant=variant)
    got = flex_attention(q, k, v, variant, ctx, 0.35, block_size=16)
    torch.testing.assert_close(got.out, ref.out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.lse, ref.lse, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.empty, ref.empty)


class PaddingMask:
    def __init__(self, keep):  # keep: bool (B, 1, N, Nk)
        self.keep = keep

    def rows(self, q0, q1):
        return self.keep[:, :, q0:q1]


def test_empty_rows_are_zero_not_nan_in_both_paths():
    """Causal dilated window (row i keeps i and i−2) under left padding of 3 keys: rows 0..2 see nothing,
    and in the second sequence (padding 1) only row 0 does."""
    ctx = TokenContext.sequence(8, causal=True, n_heads=2)
    variant = parse_variant("dilated_window:w=1,d=2")
    q, k, v = qkv(ctx, B=2, seed=4)
    keep = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    keep[0, :, :, :3] = False
    keep[1, :, :, :1] = False
    ref = attention(q, k, v, scale=1.0, ctx=ctx, variant=variant, model_mask=PaddingMask(keep))
    got = flex_attention(q, k, v, variant, ctx, 1.0, keep=keep, block_size=16)
    for res in (ref, got):
        assert not torch.isnan(res.out).any()
        assert res.empty[0, :, :3].all() and res.empty[1, :, 0].all()
        assert res.empty.sum() == 2 * (3 + 1)
        assert (res.out[res.empty] == 0).all() and torch.isneginf(res.lse[res.empty]).all()
    torch.testing.assert_close(got.out, ref.out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.lse, ref.lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["relaxed", "polyline_path", "head_ablation:heads=0.1"])
def test_flex_refuses_variants_beyond_mask_and_bias(spec):
    ctx = VIT_CTXS[0]
    q, k, v = qkv(ctx)
    with pytest.raises(VariantError, match="no FlexAttention form"):
        flex_attention(q, k, v, parse_variant(spec), ctx, 1.0)
    with pytest.raises(VariantError, match="no FlexAttention form"):
        parse_variant(spec).flex_snippet()


def test_flex_attention_checks_the_model_kind():
    ctx = SEQ_CTXS[0]
    q, k, v = qkv(ctx)
    with pytest.raises(VariantError, match="applies to vit"):
        flex_attention(q, k, v, parse_variant("window_2d"), ctx, 1.0)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def compiled_without_a_compiler(*args, **kwargs):  # inductor fails on the first call, not at torch.compile
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(flex, "_compiled", compiled_without_a_compiler)
    ctx = SEQ_CTXS[0]
    q, k, v = qkv(ctx)
    variant = parse_variant("sliding_window:w=2")
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        got = flex_attention(q, k, v, variant, ctx, 0.5, compile=True)
    ref = attention(q, k, v, scale=0.5, ctx=ctx, variant=variant)
    torch.testing.assert_close(got.out, ref.out, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ snippets


def run_snippet(code: str) -> dict:
    namespace: dict = {"__name__": "snippet"}
    exec(compile(code, "<snippet>", "exec"), namespace)
    return namespace


def snippet_for(spec, ctx):
    sizes = {"grid": ctx.grid, "n_prefix": int(ctx.special.sum())} if ctx.kind == "vit" else {"n": ctx.n}
    return parse_variant(spec).flex_snippet(ctx.kind, n_heads=ctx.n_heads, **sizes)


SNIPPET_CASES = [(s, c) for s, c in CASES if s != "full"]


@pytest.mark.parametrize("spec, ctx", SNIPPET_CASES, ids=[f"{s}-{c.kind}{c.n}" for s, c in SNIPPET_CASES])
def test_snippet_runs_and_means_the_same(spec, ctx):
    """The pasted code, run on its own, gives the variant's mask (causal included) and bias."""
    code = snippet_for(spec, ctx)
    assert "from torch.nn.attention.flex_attention import" in code
    ns = run_snippet(code)
    variant = parse_variant(spec)
    if "mask_mod" in ns:
        assert "create_block_mask(mask_mod" in code and "block_mask" in ns
        mask = create_mask(ns["mask_mod"], 1, 1, ctx.n, ctx.n, device="cpu")[0]
        assert torch.equal(mask, dense_mask(variant, ctx))
    else:  # no mask and not causal: every key kept
        assert variant.mask_mod(ctx) is None and not ctx.causal
    if variant.score_mod(ctx) is not None:
        H, N = ctx.n_heads, ctx.n
        b, h, qi, kj = index_grid(1, H, 0, N, N, "cpu")
        zeros = torch.zeros(1, H, N, N)
        bias = torch.vmap(torch.vmap(lambda q_, k_: ns["score_mod"](torch.tensor(0.0), torch.tensor(0), hh, q_, k_),
                                     in_dims=(None, 0)), in_dims=(0, None))
        for head in range(H):
            hh = torch.tensor(head)
            torch.testing.assert_close(bias(torch.arange(N), torch.arange(N)),
                                       variant.score_mod(ctx)(zeros, b, h, qi, kj)[0, head])
    else:
        assert "score_mod" not in ns


def test_snippet_bakes_values_and_auto_expressions():
    code = parse_variant("sliding_window:w=32").flex_snippet("causal")
    assert "sliding_window(q_idx, kv_idx, w=32, sinks=4)" in code
    assert "kv_idx <= q_idx" in code and "N = 1024" in code
    code = parse_variant("strided").flex_snippet("bidirectional", n=100)
    assert "stride=math.ceil(math.sqrt(N))" in code and "N = 100" in code
    assert run_snippet(code)["mask_mod"] is not None
    code = parse_variant("fixed").flex_snippet("vit", grid=(7, 9))
    assert "block=GRID[1], summary=1" in code and "GRID = (7, 9)" in code
    code = parse_variant("decay_1d").flex_snippet()  # default kind: causal
    assert "for a causal model" in code and "score_mod=score_mod, block_mask=block_mask" in code
    code = parse_variant("manhattan_decay").flex_snippet()  # only vit applies
    assert "for a vit model" in code and "SPECIAL[q_idx] | SPECIAL[kv_idx], 0.0" in code
    assert "block_mask" not in run_snippet(code)  # a pure bias on a ViT needs no block mask


def test_snippet_refusals():
    with pytest.raises(VariantError, match="full is not a static mask or score modifier"):
        parse_variant("full").flex_snippet()
    with pytest.raises(VariantError, match="full is not a static mask or score modifier"):
        flex_snippet(parse_variant("full"), "causal")
    with pytest.raises(VariantError, match="applies to vit"):
        parse_variant("window_2d").flex_snippet("causal")
    with pytest.raises(VariantError, match="applies to causal"):
        flex_snippet(parse_variant("star"), "vit")
    with pytest.raises(VariantError, match="kind must be one of"):
        flex_snippet(parse_variant("strided"), "audio")


def test_snippet_default_sizes_build_a_block_mask():
    ns = run_snippet(parse_variant("window_2d:shift=true").flex_snippet())
    assert ns["N"] == 1 + 14 * 14 and ns["block_mask"].shape[-2:] == (197, 197)
    assert math.isclose(float(ns["ROW"][-1]), 13.0)
