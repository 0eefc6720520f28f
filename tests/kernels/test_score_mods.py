"""Score modifiers (catalogue family c) against brute-force loops and naive formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sink_util import wide_sink

from kernels.context import TokenContext
from kernels.reference import attention, index_grid
from kernels.variants import VariantError, parse_variant
from kernels.variants.score_mods import parse_head_pairs, polyline_biases

VITS = [((3, 4), 1), ((5, 5), 2), ((4, 3), 1), ((2, 6), 0)]
fast = settings(max_examples=20, deadline=None)


def vit_ctx(grid, n_prefix, n_heads=3, **kw):
    return TokenContext.vit(grid, n_prefix=n_prefix, n_heads=n_heads, **kw)


def bias_of(variant, ctx) -> torch.Tensor:
    """(H, N, N): what the variant's score_mod adds to a zero score, on the reference's index grid."""
    H, N = ctx.n_heads, ctx.n
    b, h, qi, kj = index_grid(1, H, 0, N, N, "cpu")
    return variant.score_mod(ctx)(torch.zeros(1, H, N, N), b, h, qi, kj)[0]


def brute_bias(ctx, per_pair) -> torch.Tensor:
    """per_pair(h, i, j) over every head and pair in float64; pairs with a special token get 0."""
    special = ctx.special.tolist()
    out = torch.zeros(ctx.n_heads, ctx.n, ctx.n, dtype=torch.float64)
    for h in range(ctx.n_heads):
        for i in range(ctx.n):
            for j in range(ctx.n):
                out[h, i, j] = 0.0 if special[i] or special[j] else per_pair(h, i, j)
    return out


def cell(ctx, t):
    return int(ctx.row[t]), int(ctx.col[t])


def log_gamma(a, b, h, H):
    return math.log(1 - 2 ** (-a - b * h / H))


def qkv(ctx, D=4, seed=0, B=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, ctx.n_heads, ctx.n, D, generator=g) for _ in range(3))


# ------------------------------------------------------------------ pure biases vs brute force


@fast
@given(case=st.sampled_from(VITS + [(None, 7), (None, 19)]), causal=st.booleans(),
       a=st.floats(0.5, 8), b=st.floats(0, 6), H=st.integers(1, 4))
def test_decay_1d(case, causal, a, b, H):
    grid, extra = case
    ctx = vit_ctx(grid, extra, n_heads=H) if grid else TokenContext.sequence(extra, causal=causal, n_heads=H)
    v = parse_variant(f"decay_1d:a={a},b={b}")
    expected = brute_bias(ctx, lambda h, i, j: abs(i - j) * log_gamma(a, b, h, H))
    torch.testing.assert_close(bias_of(v, ctx).double(), expected, rtol=1e-5, atol=1e-5)


def test_decay_1d_defaults_follow_retnet():
    v = parse_variant("decay_1d")
    assert (v.a, v.b) == (5.0, 3.0)
    ctx = TokenContext.sequence(3, causal=True, n_heads=4)
    # γ_0 = 1 − 2^−5: one step back costs log(31/32)
    assert bias_of(v, ctx)[0, 1, 0].item() == pytest.approx(math.log(31 / 32), rel=1e-6)


@fast
@given(case=st.sampled_from(VITS), a=st.floats(0.5, 8), b=st.floats(0, 6), H=st.integers(1, 4))
def test_manhattan_decay(case, a, b, H):
    ctx = vit_ctx(*case, n_heads=H)
    v = parse_variant(f"manhattan_decay:a={a},b={b}")

    def per_pair(h, i, j):
        (ri, ci), (rj, cj) = cell(ctx, i), cell(ctx, j)
        return (abs(ri - rj) + abs(ci - cj)) * log_gamma(a, b, h, H)

    torch.testing.assert_close(bias_of(v, ctx).double(), brute_bias(ctx, per_pair), rtol=1e-5, atol=1e-5)


@fast
@given(case=st.sampled_from(VITS), sigma=st.floats(0.3, 5), lam=st.floats(0, 3))
def test_gaussian_2d_single(case, sigma, lam):
    ctx = vit_ctx(*case)
    v = parse_variant(f"gaussian_2d:sigma={sigma},lam={lam}")

    def per_pair(h, i, j):
        (ri, ci), (rj, cj) = cell(ctx, i), cell(ctx, j)
        return -lam * ((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma**2)

    torch.testing.assert_close(bias_of(v, ctx).double(), brute_bias(ctx, per_pair), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigmas, weights", [("1;2;4", ""), ("[0.5,3]", "1;3"), ("2", "5"), ("1;2", "0;1")])
def test_gaussian_2d_mixture(sigmas, weights):
    ctx = vit_ctx((5, 5), 2)
    v = parse_variant(f"gaussian_2d:sigmas={sigmas},weights={weights},lam=1.5")
    sig = [float(s) for s in sigmas.strip("[]").replace(",", ";").split(";")]
    w = [float(x) for x in weights.split(";")] if weights else [1.0] * len(sig)
    w = [x / sum(w) for x in w]

    def per_pair(h, i, j):
        (ri, ci), (rj, cj) = cell(ctx, i), cell(ctx, j)
        d2 = (ri - rj) ** 2 + (ci - cj) ** 2
        return math.log(sum(wm * math.exp(-1.5 * d2 / (2 * sm**2)) for wm, sm in zip(w, sig)))

    torch.testing.assert_close(bias_of(v, ctx).double(), brute_bias(ctx, per_pair), rtol=1e-5, atol=1e-5)


def test_gaussian_2d_defaults():
    v = parse_variant("gaussian_2d")
    assert (v.sigma, v.lam, v.mixture) == (2.0, 1.0, (2.0,))


# ------------------------------------------------------------------ polyline path


def walk(log_alpha, log_beta, start, end, horizontal_first):
    """Step cell by cell from start to end, summing the decay of every cell stepped onto."""
    (r, c), (r_end, c_end) = start, end
    total = 0.0
    legs = ["h", "v"] if horizontal_first else ["v", "h"]
    for leg in legs:
        if leg == "h":
            while c != c_end:
                c += 1 if c_end > c else -1
                total += log_alpha[r][c]
        else:
            while r != r_end:
                r += 1 if r_end > r else -1
                total += log_beta[r][c]
    return total


@fast
@given(rows=st.integers(1, 5), cols=st.integers(1, 5), seed=st.integers(0, 1000))
def test_polyline_biases_match_path_walk(rows, cols, seed):
    """Random per-token α, β (here different per head too) against a step-by-step walk."""
    g = torch.Generator().manual_seed(seed)
    log_alpha = torch.rand(2, rows, cols, generator=g, dtype=torch.float64).clamp(min=0.05).log()
    log_beta = torch.rand(2, rows, cols, generator=g, dtype=torch.float64).clamp(min=0.05).log()
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    r = torch.tensor([rc[0] for rc in cells])
    c = torch.tensor([rc[1] for rc in cells])
    L, L2 = polyline_biases(log_alpha, log_beta, r[:, None], c[:, None], r[None, :], c[None, :])
    for h in range(2):
        la, lb = log_alpha[h].tolist(), log_beta[h].tolist()
        for i, start in enumerate(cells):
            for j, end in enumerate(cells):
                assert L[h, i, j].item() == pytest.approx(walk(la, lb, start, end, True), abs=1e-9)
                assert L2[h, i, j].item() == pytest.approx(walk(la, lb, start, end, False), abs=1e-9)


def naive_polyline(q, k, v, scale, ctx, log_alpha, log_beta, keep=None):
    """Rows one at a time: ½softmax(s+L) + ½softmax(s+L') with path walks; (probs, out) in float64."""
    B, H, N, _ = q.shape
    special = ctx.special.tolist()
    probs = torch.zeros(B, H, N, N, dtype=torch.float64)
    for bi in range(B):
        for h in range(H):
            la, lb = log_alpha[bi, h].tolist(), log_beta[bi, h].tolist()
            for i in range(N):
                s = (q[bi, h, i].double() @ k[bi, h].double().T) * scale
                if keep is not None:
                    s = s.masked_fill(~keep[i], -math.inf)
                mix = torch.zeros(N, dtype=torch.float64)
                for first in (True, False):
                    bias = torch.tensor([0.0 if special[i] or special[j] else
                                         walk(la, lb, cell(ctx, i), cell(ctx, j), first) for j in range(N)],
                                        dtype=torch.float64)
                    mix += 0.5 * torch.softmax(s + bias, -1)
                probs[bi, h, i] = mix
    return probs, probs @ v.double()


def edge_aware_logs(k, ctx, alpha, beta):
    """log α, log β per cell: alpha^(1 − mean cos with left/right keys), beta with up/down keys."""
    B, H = k.shape[:2]
    rows, cols = ctx.grid
    token = {cell(ctx, t): t for t in range(ctx.n) if not ctx.special[t]}
    la = torch.zeros(B, H, rows, cols, dtype=torch.float64)
    lb = torch.zeros(B, H, rows, cols, dtype=torch.float64)
    for bi in range(B):
        for h in range(H):
            for (r, c), t in token.items():
                for table, base, neighbours in ((la, alpha, [(r, c - 1), (r, c + 1)]),
                                                (lb, beta, [(r - 1, c), (r + 1, c)])):
                    sims = [torch.cosine_similarity(k[bi, h, t].double(), k[bi, h, token[n]].double(), dim=0).item()
                            for n in neighbours if n in token]
                    mean = sum(sims) / len(sims) if sims else 0.0
                    table[bi, h, r, c] = (1 - mean) * math.log(base)
    return la, lb


@pytest.mark.parametrize("grid, n_prefix", [((3, 4), 1), ((4, 4), 2)])
@pytest.mark.parametrize("edge_aware", [False, True])
def test_polyline_path_attention_matches_naive(grid, n_prefix, edge_aware):
    ctx = vit_ctx(grid, n_prefix, n_heads=2)
    q, k, v = qkv(ctx, B=2, seed=3)
    variant = parse_variant(f"polyline_path:alpha=0.7,beta=0.85,edge_aware={edge_aware}")
    if edge_aware:
        la, lb = edge_aware_logs(k, ctx, 0.7, 0.85)
    else:
        la = torch.full((2, 2, *grid), math.log(0.7), dtype=torch.float64)
        lb = torch.full((2, 2, *grid), math.log(0.85), dtype=torch.float64)
    probs, out = naive_polyline(q, k, v, 0.4, ctx, la, lb)
    seen = []
    res = attention(q, k, v, scale=0.4, ctx=ctx, variant=variant, want_probs=True, chunk=5,
                    sinks=(wide_sink(lambda q0, q1, p, s: seen.append((q0, q1, p.clone()))),))
    torch.testing.assert_close(res.probs.double(), probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.out.double(), out, atol=1e-5, rtol=1e-5)
    assert [(a, b) for a, b, _ in seen] == [(q0, min(ctx.n, q0 + 5)) for q0 in range(0, ctx.n, 5)]
    torch.testing.assert_close(torch.cat([p for *_, p in seen], dim=2), res.probs)
    assert not res.empty.any()


@pytest.mark.parametrize("a", [1.0, 3.3])
def test_polyline_constant_decay_equals_manhattan_decay(a):
    """The catalogue's check: α = β = γ gives manhattan_decay with γ. manhattan_decay's γ_h varies
    with the head, so compare with b=0, where γ_h = 1 − 2^(−a) for every head."""
    gamma = 1 - 2 ** (-a)
    ctx = vit_ctx((4, 5), 1, n_heads=3)
    q, k, v = qkv(ctx, seed=7)
    poly = attention(q, k, v, scale=0.5, ctx=ctx, variant=parse_variant(f"polyline_path:alpha={gamma},beta={gamma}"),
                     want_probs=True)
    manhattan = attention(q, k, v, scale=0.5, ctx=ctx, variant=parse_variant(f"manhattan_decay:a={a},b=0"),
                          want_probs=True)
    torch.testing.assert_close(poly.probs, manhattan.probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(poly.out, manhattan.out, atol=1e-6, rtol=1e-5)


def test_polyline_path_honours_masks_and_empty_rows():
    ctx = vit_ctx((3, 3), 1, n_heads=1)
    q, k, v = qkv(ctx, seed=1)
    keep = torch.ones(ctx.n, ctx.n, dtype=torch.bool)
    keep[4] = False  # query 4 sees nothing
    keep[:, 7] = False  # nobody sees key 7
    res = attention(q, k, v, scale=1.0, ctx=ctx, variant=parse_variant("polyline_path"),
                    model_mask=DenseMask(keep), want_probs=True)
    la = torch.full((1, 1, 3, 3), math.log(0.9), dtype=torch.float64)
    probs, out = naive_polyline(q, k, v, 1.0, ctx, la, la, keep=keep)
    probs[0, 0, 4] = 0.0  # the naive softmax of an all −∞ row is NaN; the variant promises zeros
    out[0, 0, 4] = 0.0
    assert not torch.isnan(res.out).any()
    assert res.empty[0, 0].tolist() == [i == 4 for i in range(ctx.n)]
    torch.testing.assert_close(res.probs.double(), probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.out.double(), out, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ relaxed


class DenseMask:
    """A model mask from a dense bool (N, Nk), as models/inject.py hands one over."""

    def __init__(self, keep):
        self.keep = keep[None, None]

    def rows(self, q0, q1):
        return self.keep[:, :, q0:q1]


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("causal", [True, False])
def test_relaxed_matches_naive_formula(gamma, causal):
    ctx = TokenContext.sequence(9, causal=causal, n_heads=2)
    q, k, v = qkv(ctx, seed=2)
    keep = torch.ones(9, 9, dtype=torch.bool)
    keep[:, 2] = False  # a padded key
    keep[5] = False  # a row that sees nothing
    if causal:
        keep &= torch.ones(9, 9, dtype=torch.bool).tril()
    res = attention(q, k, v, scale=0.3, ctx=ctx, variant=parse_variant(f"relaxed:gamma={gamma}"),
                    model_mask=DenseMask(keep), want_probs=True, chunk=4)
    expected = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    for h in range(2):
        for i in range(9):
            n_i = int(keep[i].sum())
            if n_i == 0:
                continue
            s = (q[0, h, i].double() @ k[0, h].double().T * 0.3).masked_fill(~keep[i], -math.inf)
            expected[0, h, i] = (1 - gamma) * torch.softmax(s, -1) + gamma * keep[i].double() / n_i
    torch.testing.assert_close(res.probs.double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.out.double(), expected @ v.double(), atol=1e-6, rtol=1e-5)
    assert (res.probs[..., ~keep] == 0).all()  # masked keys stay 0
    assert res.empty[0, :, 5].all() and not torch.isnan(res.out).any()


# ------------------------------------------------------------------ head ablation


@pytest.mark.parametrize(
    "text, pairs",
    [("0.1;2.3", ((0, 1), (2, 3))), ("[(0,1),(2,3)]", ((0, 1), (2, 3))), ("[(1, 0)]", ((1, 0),)),
     ("1:2", ((1, 2),)), ("(3,4),(0,0)", ((0, 0), (3, 4))), ("", ()), ("[]", ())],
)
def test_head_pairs_parse(text, pairs):
    assert parse_head_pairs("head_ablation", text) == pairs


@pytest.mark.parametrize("text", ["0.1;x", "1", "[(0,1),(2)]", "0.-1", "(a,b)", "0.1;2", "[(0,1)] junk"])
def test_head_pairs_bad_text_raises(text):
    with pytest.raises(VariantError, match="heads"):
        parse_variant(f"head_ablation:heads={text}")


def test_head_ablation_zeroes_chosen_heads_only():
    ctx = TokenContext.sequence(7, causal=True, n_heads=4, n_layers=3).with_layer(2, 4)
    q, k, v = qkv(ctx, seed=5)
    variant = parse_variant("head_ablation:heads=[(2,1),(2,3),(0,0)]")
    seen = []
    res = attention(q, k, v, scale=0.5, ctx=ctx, variant=variant, want_probs=True, chunk=3,
                    sinks=(wide_sink(lambda q0, q1, p, s: seen.append(p.clone())),))
    full = attention(q, k, v, scale=0.5, ctx=ctx, variant=parse_variant("full"), want_probs=True)
    ablated = torch.tensor([False, True, False, True])
    assert (res.out[:, ablated] == 0).all() and (res.probs[:, ablated] == 0).all()
    torch.testing.assert_close(res.out[:, ~ablated], full.out[:, ~ablated])
    torch.testing.assert_close(res.probs[:, ~ablated], full.probs[:, ~ablated])
    torch.testing.assert_close(torch.cat(seen, dim=2), res.probs)
    assert not res.empty.any()
    # layer 0 of the same variant: only head 0
    res0 = attention(q, k, v, scale=0.5, ctx=ctx.with_layer(0, 4), variant=variant)
    assert (res0.out[:, 0] == 0).all() and torch.allclose(res0.out[:, 1:], full.out[:, 1:])


def test_head_ablation_keeps_model_mask_and_empty_rows():
    ctx = TokenContext.sequence(5, causal=False, n_heads=2)
    q, k, v = qkv(ctx, seed=9)
    keep = torch.ones(5, 5, dtype=torch.bool)
    keep[0] = False
    res = attention(q, k, v, scale=1.0, ctx=ctx, variant=parse_variant("head_ablation:heads=0.1"),
                    model_mask=DenseMask(keep))
    full = attention(q, k, v, scale=1.0, ctx=ctx, variant=parse_variant("full"), model_mask=DenseMask(keep))
    torch.testing.assert_close(res.out[:, 0], full.out[:, 0])
    assert res.empty[0, :, 0].all() and not torch.isnan(res.out).any()


def test_head_ablation_refuses_missing_layers_and_heads():
    v = parse_variant("head_ablation:heads=5.0")
    with pytest.raises(VariantError, match="layer 5"):
        v.check(TokenContext.sequence(4, causal=True, n_layers=2))
    ctx = TokenContext.sequence(4, causal=True, n_layers=6).with_layer(5, 2)
    q, k, w = qkv(ctx)
    with pytest.raises(VariantError, match="head 7 of layer 5"):
        attention(q, k, w, scale=1.0, ctx=ctx, variant=parse_variant("head_ablation:heads=5.7"))


# ------------------------------------------------------------------ errors, targets, metadata


@pytest.mark.parametrize(
    "spec, param, allowed",
    [
        ("decay_1d:a=0", "a", "(0, inf]"),
        ("decay_1d:b=-1", "b", "[0, inf]"),
        ("manhattan_decay:a=-2", "a", "(0, inf]"),
        ("polyline_path:alpha=0", "alpha", "(0, 1]"),
        ("polyline_path:beta=1.5", "beta", "(0, 1]"),
        ("polyline_path:edge_aware=perhaps", "edge_aware", "true or false"),
        ("gaussian_2d:sigma=0", "sigma", "(0, inf]"),
        ("gaussian_2d:lam=-1", "lam", "[0, inf]"),
        ("gaussian_2d:sigmas=1;-2", "sigmas", "numbers > 0"),
        ("gaussian_2d:sigmas=1;two", "sigmas", "numbers > 0"),
        ("gaussian_2d:sigmas=1;2,weights=1", "weights", "one weight per sigma"),
        ("gaussian_2d:weights=0", "weights", "not all be 0"),
        ("relaxed:gamma=0", "gamma", "(0, 1]"),
        ("relaxed:gamma=1.01", "gamma", "(0, 1]"),
        ("head_ablation:heads=nope", "heads", "like 0.1;2.3"),
    ],
)
def test_bad_values_name_parameter_and_range(spec, param, allowed):
    with pytest.raises(VariantError) as err:
        parse_variant(spec)
    assert param in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("name", ["manhattan_decay", "polyline_path", "gaussian_2d"])
def test_vit_only_variants_refuse_sequences(name):
    v = parse_variant(name)
    v.check(vit_ctx((3, 3), 1))
    for causal in (True, False):
        with pytest.raises(VariantError, match="applies to vit"):
            v.check(TokenContext.sequence(6, causal=causal))


def test_metadata():
    kinds = {"decay_1d": {"vit", "causal", "bidirectional"}, "manhattan_decay": {"vit"}, "polyline_path": {"vit"},
             "gaussian_2d": {"vit"}, "relaxed": {"vit", "causal", "bidirectional"},
             "head_ablation": {"vit", "causal", "bidirectional"}}
    defaults = {"decay_1d": {"a": 5.0, "b": 3.0}, "manhattan_decay": {"a": 2.0, "b": 5.0},
                "polyline_path": {"alpha": 0.9, "beta": 0.9, "edge_aware": False},
                "gaussian_2d": {"sigma": 2.0, "lam": 1.0, "sigmas": "", "weights": ""},
                "relaxed": {"gamma": 0.1}, "head_ablation": {"heads": ""}}
    for name, applies in kinds.items():
        v = parse_variant(name)
        assert v.family == "score_mod" and v.applies_to == frozenset(applies)
        assert v.values == defaults[name]
        assert "20" in (type(v).__doc__ or "")
        assert parse_variant(v.spec()).values == v.values
