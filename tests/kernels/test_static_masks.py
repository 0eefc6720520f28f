"""Static masks (catalogue family a) against brute-force double loops over (i, j)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.context import TokenContext
from kernels.reference import allowed_fn, attention
from kernels.variants import VariantError, parse_variant

# (grid, n_prefix) of small ViTs and (n, causal) of small sequences
VITS = [((3, 4), 1), ((5, 5), 2), ((4, 3), 1), ((2, 6), 0)]
SEQS = [(1, True), (9, True), (23, True), (17, False), (30, False)]


def vit_ctx(grid, n_prefix):
    return TokenContext.vit(grid, n_prefix=n_prefix)


def seq_ctx(n, causal):
    return TokenContext.sequence(n, causal=causal)


def reference_mask(variant, ctx) -> list[list[bool]]:
    """The kept (i, j) pairs as the reference path sees them (causality and the variant's mask_mod)."""
    keep = allowed_fn(variant, ctx, None, 1, 1, ctx.n, "cpu")(0, ctx.n)
    if keep is None:
        return [[True] * ctx.n for _ in range(ctx.n)]
    return keep.expand(1, 1, ctx.n, ctx.n)[0, 0].tolist()


def brute_mask(ctx, rule) -> list[list[bool]]:
    """rule(i, j) over every pair; special tokens global; the causal mask on top."""
    special = ctx.special.tolist()
    out = []
    for i in range(ctx.n):
        row = []
        for j in range(ctx.n):
            keep = True if special[i] or special[j] else bool(rule(i, j))
            if ctx.causal:
                keep = keep and j <= i
            row.append(keep)
        out.append(row)
    return out


def cell(ctx, t):
    return int(ctx.row[t]), int(ctx.col[t])


# ------------------------------------------------------------------ brute-force rules (catalogue text)


def sliding_rule(w, sinks):
    return lambda i, j: abs(i - j) <= w or j < sinks


def strided_rule(stride):
    return lambda i, j: abs(i - j) < stride or (i - j) % stride == 0


def fixed_rule(block, c):
    return lambda i, j: j // block == i // block or j % block >= block - c


def dilated_rule(w, d):
    return lambda i, j: abs(i - j) <= w * d and (i - j) % d == 0


def neighborhood_rule(ctx, k):
    def rule(i, j):
        (ri, ci), (rj, cj) = cell(ctx, i), cell(ctx, j)
        return max(abs(ri - rj), abs(ci - cj)) <= k

    return rule


def window_rule(ctx, M, shift):
    """Literally Swin: roll the grid of cells by −M//2 (when shifting), cut it in M×M windows."""
    rows, cols = ctx.grid
    grid = [[(r, c) for c in range(cols)] for r in range(rows)]
    s = M // 2 if shift else 0
    rolled = [[grid[(r + s) % rows][(c + s) % cols] for c in range(cols)] for r in range(rows)]
    window_of = {}
    for r in range(rows):
        for c in range(cols):
            window_of[rolled[r][c]] = (r // M, c // M)
    return lambda i, j: window_of[cell(ctx, i)] == window_of[cell(ctx, j)]


def star_rule(n, b, q_tokens):
    def rule(i, j):
        if i >= n - q_tokens:  # a query token: everything before it
            return True
        return j // b == i // b or j // b == 0  # own block, and the anchor block 0

    return rule


# ------------------------------------------------------------------ masks vs brute force

vit_cases = st.sampled_from(VITS)
seq_cases = st.sampled_from(SEQS)
any_ctx = st.one_of(vit_cases.map(lambda g: vit_ctx(*g)), seq_cases.map(lambda s: seq_ctx(*s)))
fast = settings(max_examples=25, deadline=None)


@fast
@given(ctx=any_ctx, w=st.integers(0, 12), sinks=st.integers(0, 5))
def test_sliding_window(ctx, w, sinks):
    v = parse_variant(f"sliding_window:w={w},sinks={sinks}")
    assert reference_mask(v, ctx) == brute_mask(ctx, sliding_rule(w, sinks))


@fast
@given(ctx=any_ctx, stride=st.integers(1, 8))
def test_strided(ctx, stride):
    v = parse_variant(f"strided:l={stride}")
    assert reference_mask(v, ctx) == brute_mask(ctx, strided_rule(stride))


@fast
@given(ctx=any_ctx, block=st.integers(1, 9), c=st.integers(0, 9))
def test_fixed(ctx, block, c):
    c = min(c, block)
    v = parse_variant(f"fixed:l={block},c={c}")
    assert reference_mask(v, ctx) == brute_mask(ctx, fixed_rule(block, c))


@fast
@given(ctx=any_ctx, w=st.integers(0, 6), d=st.integers(1, 4))
def test_dilated_window(ctx, w, d):
    v = parse_variant(f"dilated_window:w={w},d={d}")
    assert reference_mask(v, ctx) == brute_mask(ctx, dilated_rule(w, d))


@fast
@given(case=vit_cases, M=st.integers(1, 6), shift=st.booleans())
def test_window_2d(case, M, shift):
    ctx = vit_ctx(*case)
    v = parse_variant(f"window_2d:M={M},shift={shift}")
    assert reference_mask(v, ctx) == brute_mask(ctx, window_rule(ctx, M, shift))


def test_window_2d_shift_moves_windows():
    """On a 4×4 grid with M=2, the shifted windows are centred on the unshifted windows' corners."""
    ctx = vit_ctx((4, 4), 0)
    plain, shifted = parse_variant("window_2d:M=2"), parse_variant("window_2d:M=2,shift=true")
    plain_keep, shifted_keep = reference_mask(plain, ctx), reference_mask(shifted, ctx)
    # cells (1,1) and (1,2) (tokens 5, 6) share a window only after the shift
    assert not plain_keep[5][6] and shifted_keep[5][6]
    # cyclic: cells (0,0) and (3,3) (tokens 0, 15) wrap into the same shifted window
    assert shifted_keep[0][15] and not plain_keep[0][15]


@fast
@given(case=vit_cases, k=st.integers(0, 4))
def test_neighborhood_2d(case, k):
    ctx = vit_ctx(*case)
    v = parse_variant(f"neighborhood_2d:k={k}")
    assert reference_mask(v, ctx) == brute_mask(ctx, neighborhood_rule(ctx, k))


@fast
@given(n=st.integers(1, 30), b=st.integers(1, 9), q_tokens=st.integers(0, 10))
def test_star(n, b, q_tokens):
    ctx = seq_ctx(n, causal=True)
    v = parse_variant(f"star:b={b},q_tokens={q_tokens}")
    assert reference_mask(v, ctx) == brute_mask(ctx, star_rule(n, b, q_tokens))


# ------------------------------------------------------------------ auto defaults


@pytest.mark.parametrize("n", [1, 16, 17, 197])
def test_strided_default_is_ceil_sqrt_n(n):
    ctx = seq_ctx(n, causal=False)
    v = parse_variant("strided")
    assert v.l is None and v.resolved(ctx)["l"] == math.ceil(math.sqrt(n))
    assert reference_mask(v, ctx) == brute_mask(ctx, strided_rule(math.ceil(math.sqrt(n))))


def test_model_dependent_defaults():
    vit, llm = vit_ctx((5, 5), 2), seq_ctx(300, causal=True)
    assert parse_variant("fixed").resolved(vit) == {"l": 5, "c": 1}
    assert parse_variant("fixed").resolved(llm) == {"l": 128, "c": 8}
    assert parse_variant("fixed:c=3").resolved(vit) == {"l": 5, "c": 3}
    assert parse_variant("sliding_window").resolved(llm) == {"w": 256, "sinks": 4}
    assert parse_variant("sliding_window").resolved(vit) == {"w": 256, "sinks": 0}
    assert parse_variant("star").resolved(llm) == {"b": 75, "q_tokens": 16}
    assert parse_variant("star").resolved(seq_ctx(10, True))["b"] == 3
    # the default fixed pattern on a ViT, as the brute-force loop sees it
    assert reference_mask(parse_variant("fixed"), vit) == brute_mask(vit, fixed_rule(5, 1))


def test_catalogue_defaults():
    assert parse_variant("sliding_window").values == {"w": 256, "sinks": None}
    assert parse_variant("dilated_window").values == {"w": 64, "d": 2}
    assert parse_variant("window_2d").values == {"M": 7, "shift": False}
    assert parse_variant("neighborhood_2d").values == {"k": 3}
    assert parse_variant("star").values == {"b": None, "q_tokens": 16}


@pytest.mark.parametrize("spec", ["sliding_window", "strided:l=5", "fixed:c=2", "window_2d:shift=true", "star:b=auto"])
def test_spec_round_trips(spec):
    v = parse_variant(spec)
    assert parse_variant(v.spec()).values == v.values


def test_describe_says_auto():
    params = {p["name"]: p for p in parse_variant("strided").describe()["params"]}
    assert params["l"]["default"] == "auto" and "auto" in params["l"]["allowed"]


# ------------------------------------------------------------------ errors, targets, metadata


@pytest.mark.parametrize(
    "spec, param, allowed",
    [
        ("sliding_window:w=-1", "w", "[0, inf]"),
        ("sliding_window:sinks=-2", "sinks", "[0, inf]"),
        ("sliding_window:w=abc", "w", "int"),
        ("strided:l=0", "l", "[1, inf]"),
        ("fixed:l=0", "l", "[1, inf]"),
        ("fixed:l=4,c=5", "c", "[0, l=4]"),
        ("dilated_window:d=0", "d", "[1, inf]"),
        ("dilated_window:w=-3", "w", "[0, inf]"),
        ("window_2d:M=0", "M", "[1, inf]"),
        ("window_2d:shift=maybe", "shift", "true or false"),
        ("neighborhood_2d:k=-1", "k", "[0, inf]"),
        ("star:b=0", "b", "[1, inf]"),
        ("star:q_tokens=-1", "q_tokens", "[0, inf]"),
    ],
)
def test_bad_values_name_parameter_and_range(spec, param, allowed):
    with pytest.raises(VariantError) as err:
        parse_variant(spec)
    assert param in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    "name, refused",
    [("window_2d", ["causal", "bidirectional"]), ("neighborhood_2d", ["causal", "bidirectional"]),
     ("star", ["vit", "bidirectional"])],
)
def test_variants_refuse_other_models(name, refused):
    v = parse_variant(name)
    for kind in refused:
        ctx = vit_ctx((3, 3), 1) if kind == "vit" else seq_ctx(8, kind == "causal")
        with pytest.raises(VariantError, match=f"applies to .* not to a {kind} model"):
            v.check(ctx)


def test_metadata():
    expected = {
        "sliding_window": {"vit", "causal", "bidirectional"}, "strided": {"vit", "causal", "bidirectional"},
        "fixed": {"vit", "causal", "bidirectional"}, "dilated_window": {"vit", "causal", "bidirectional"},
        "window_2d": {"vit"}, "neighborhood_2d": {"vit"}, "star": {"causal"},
    }
    for name, kinds in expected.items():
        cls = type(parse_variant(name))
        assert cls.family == "static_mask" and cls.applies_to == frozenset(kinds)
        assert "20" in (cls.__doc__ or "")  # cites a paper with its year


# ------------------------------------------------------------------ empty rows


class PaddingMask:
    """A model mask hiding the first `pad` keys (left padding), as models/inject.py hands it over."""

    def __init__(self, n, pad):
        self.keep = (torch.arange(n) >= pad)[None, None, None, :]

    def rows(self, q0, q1):
        return self.keep.expand(1, 1, q1 - q0, -1)


def test_row_with_every_key_masked_gives_zeros_not_nan():
    # causal, dilation 3 with w=1: row i keeps j ∈ {i−3, i}; padding hides keys 0..3, so rows 0..3 see nothing
    torch.manual_seed(0)
    n, H, D = 10, 2, 4
    q, k, v = (torch.randn(1, H, n, D) for _ in range(3))
    ctx = seq_ctx(n, causal=True)
    res = attention(q, k, v, scale=0.5, ctx=ctx, variant=parse_variant("dilated_window:w=1,d=3"),
                    model_mask=PaddingMask(n, 4), want_probs=True, chunk=3)
    assert not torch.isnan(res.out).any() and not torch.isnan(res.probs).any()
    assert res.empty[0, :, :4].all() and not res.empty[0, :, 4:].any()
    assert (res.out[0, :, :4] == 0).all() and (res.probs[0, :, :4] == 0).all()
    assert torch.isneginf(res.lse[0, :, :4]).all()
    # row 6 keeps only key 6 (key 3 is padding): its output is v[6]
    torch.testing.assert_close(res.out[0, :, 6], v[0, :, 6])


def test_demo_draws_a_mask():
    from kernels.variants.static_masks import demo

    art = demo("neighborhood_2d:k=1", (3, 3)).splitlines()
    assert len(art) == 10 and art[0] == "#" * 10  # CLS row: global
    assert art[5] == "#" + "#" * 9  # the centre cell sees its whole 3×3 neighbourhood
