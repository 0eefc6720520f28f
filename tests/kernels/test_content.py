"""Content-dependent sparsity (catalogue family b) against brute-force float64 definitions,
run through the reference path the app uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from sink_util import wide_sink

from kernels.context import TokenContext
from kernels.reference import attention
from kernels.variants import REGISTRY, VariantError, parse_variant

D = 8
SCALE = D**-0.5


def rand_qkv(B=2, H=3, N=13, D=D, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    return q * spread, k, v


def run(spec, q, k, v, ctx, chunk=5, model_mask=None, sinks=()):
    variant = parse_variant(spec)
    variant.check(ctx)
    return attention(q, k, v, scale=SCALE, ctx=ctx, variant=variant, want_probs=True, chunk=chunk,
                     model_mask=model_mask, sinks=sinks)


def scores64(q, k):
    return (q.double() @ k.double().transpose(-1, -2)) * SCALE


def naive_softmax(s, keep):
    """Softmax of s over kept keys, in float64 with explicit row loops; empty rows give zeros."""
    B, H, N, Nk = s.shape
    p = torch.zeros(B, H, N, Nk, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                js = [j for j in range(Nk) if keep[b, h, i, j]]
                if js:
                    e = torch.exp(s[b, h, i, js] - s[b, h, i, js].max())
                    p[b, h, i, js] = e / e.sum()
    return p


def causal_keep(B, H, N):
    return torch.ones(N, N, dtype=torch.bool).tril().expand(B, H, N, N)


def check_against(res, probs64, v, atol=1e-5):
    assert torch.allclose(res.probs.double(), probs64, atol=atol)
    assert torch.allclose(res.out.double(), probs64 @ v.double(), atol=atol)


class DenseMask:
    """A model mask given densely, the shape the reference path expects from `rows`."""

    def __init__(self, keep):  # (B, 1, N, Nk) bool
        self.keep = keep

    def rows(self, q0, q1):
        return self.keep[:, :, q0:q1]


# ------------------------------------------------------------------ registry, parameters, targets

FAMILY_B = {
    "topk": {"vit", "causal", "bidirectional"},
    "top_theta": {"vit", "causal", "bidirectional"},
    "routing_2d": {"vit", "causal", "bidirectional"},
    "block_topk": {"vit", "causal", "bidirectional"},
    "entmax": {"vit", "causal", "bidirectional"},
    "dam": {"causal"},
}


@pytest.mark.parametrize("name", sorted(FAMILY_B))
def test_registered_with_catalogue_metadata(name):
    cls = REGISTRY[name]
    assert cls.family == "content"
    assert set(cls.applies_to) == FAMILY_B[name]
    assert "20" in cls.__doc__  # cites a paper with its year
    parse_variant(name)  # the defaults are valid


def test_defaults_follow_the_catalogue():
    assert parse_variant("topk").resolved(TokenContext.sequence(300, True))["k"] == 64
    assert parse_variant("topk").resolved(TokenContext.vit((14, 14)))["k"] == math.ceil(197 / 4)
    assert parse_variant("top_theta").values == {"k": 64, "compensate": True}
    assert parse_variant("routing_2d").values == {"S": 7, "k": 4}
    assert parse_variant("block_topk").values == {"b": 64, "blocks": 8}
    assert parse_variant("entmax").values == {"alpha": 1.5}
    assert parse_variant("dam").values == {"tau": 0.1}


@pytest.mark.parametrize("spec,param", [
    ("topk:k=0", "k"), ("topk:k=x", "k"), ("top_theta:k=0", "k"), ("top_theta:compensate=maybe", "compensate"),
    ("routing_2d:S=0", "S"), ("routing_2d:k=0", "k"), ("block_topk:b=0", "b"), ("block_topk:blocks=0", "blocks"),
    ("entmax:alpha=0.5", "alpha"), ("entmax:alpha=2.5", "alpha"), ("dam:tau=1.5", "tau"), ("dam:tau=-0.1", "tau"),
])
def test_bad_parameters_name_the_parameter(spec, param):
    with pytest.raises(VariantError, match=rf"\b{param}="):
        parse_variant(spec)


@pytest.mark.parametrize("ctx", [TokenContext.vit((3, 3)), TokenContext.sequence(8, False)])
def test_dam_refuses_non_causal_models(ctx):
    with pytest.raises(VariantError, match="dam applies to causal"):
        parse_variant("dam").check(ctx)


# ------------------------------------------------------------------ topk


def brute_topk(s, allowed, k, special):
    """Keep the k largest allowed scores per row (ties: earlier key), special tokens global."""
    B, H, N, Nk = s.shape
    keep = torch.zeros(B, H, N, Nk, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                cand = [j for j in range(Nk) if allowed[i][j] and not special[j]]
                cand.sort(key=lambda j: (-float(s[b, h, i, j]), j))
                for j in range(Nk):
                    keep[b, h, i, j] = allowed[i][j] and (special[i] or special[j] or j in cand[:k])
    return keep


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("k", [1, 4, 40])
def test_topk_equals_brute_force(causal, k):
    N = 17
    q, kk, v = rand_qkv(N=N, seed=k)
    ctx = TokenContext.sequence(N, causal)
    res = run(f"topk:k={k}", q, kk, v, ctx)
    allowed = [[(j <= i) or not causal for j in range(N)] for i in range(N)]
    keep = brute_topk(scores64(q, kk), allowed, k, [False] * N)
    check_against(res, naive_softmax(scores64(q, kk), keep), v)
    kept = (res.probs > 0).sum(-1)
    expected = torch.tensor([min(k, sum(row)) for row in allowed])
    assert torch.equal(kept, expected.expand_as(kept))  # exactly k, fewer when fewer are allowed


def test_topk_auto_k_on_a_vit_keeps_special_tokens_global():
    ctx = TokenContext.vit((3, 4), n_prefix=1)  # 13 tokens: auto k = 4
    q, k, v = rand_qkv(N=ctx.n, seed=3)
    res = run("topk", q, k, v, ctx)
    special = ctx.special.tolist()
    allowed = [[True] * ctx.n for _ in range(ctx.n)]
    keep = brute_topk(scores64(q, k), allowed, 4, special)
    check_against(res, naive_softmax(scores64(q, k), keep), v)
    assert bool((res.probs[:, :, 0] > 0).all())  # the CLS query sees every key
    assert bool((res.probs[:, :, :, 0] > 0).all())  # every query sees CLS
    assert bool(((res.probs[:, :, 1:, 1:] > 0).sum(-1) == 4).all())  # plus exactly k patches


def test_topk_ties_go_to_the_earlier_key():
    q = torch.zeros(1, 1, 6, D)  # every score is 0
    k, v = torch.randn(2, 1, 1, 6, D).unbind(0)
    res = run("topk:k=2", q, k, v, TokenContext.sequence(6, False))
    assert bool((res.probs[..., :2] == 0.5).all()) and bool((res.probs[..., 2:] == 0).all())


# ------------------------------------------------------------------ top_theta


def test_top_theta_calibration_on_a_hand_built_example():
    ninf = float("-inf")
    scores = torch.tensor([[  # (B=1, H=2, c=3, Nk=4), k = 2
        [[4.0, 3.0, 2.0, 1.0], [1.0, 5.0, ninf, ninf], [7.0, ninf, ninf, ninf]],  # 2nd largest: 3, 1, (row skipped)
        [[0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, -3.0, ninf], [2.0, 6.0, 4.0, 9.0]],  # 0, -2, 6
    ]])
    variant = parse_variant("top_theta:k=2")
    ctx = TokenContext.sequence(3, False)
    stats = variant.calibrate(0, 3, torch.softmax(scores, -1), scores, ctx)
    assert stats["kth_sum"].tolist() == [4.0, 4.0] and stats["kth_rows"].tolist() == [2.0, 3.0]
    by_rows = [variant.calibrate(i, i + 1, None, scores[:, :, i:i + 1], ctx) for i in range(3)]
    assert torch.equal(sum(d["kth_sum"] for d in by_rows), stats["kth_sum"])  # chunk sums add up
    ctx = TokenContext.sequence(3, False, calibration={0: stats}, n_heads=2)
    assert torch.allclose(variant.thresholds(ctx, 2), torch.tensor([2.0, 4.0 / 3.0]))


def naive_top_theta(s, v, keep, theta, compensate):
    """The docstring's formulas, one row at a time: denominator and V-mean compensation."""
    B, H, N, Nk = s.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    probs = torch.zeros(B, H, N, Nk, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            t = theta[h]
            for i in range(N):
                allowed = [j for j in range(Nk) if keep[i][j]]
                kept = [j for j in allowed if s[b, h, i, j] >= t]
                pruned = [j for j in allowed if s[b, h, i, j] < t]
                m = max(max(float(s[b, h, i, j]) for j in allowed), t)
                z = sum(math.exp(s[b, h, i, j] - m) for j in kept)
                if compensate:
                    z += len(pruned) * math.exp(t - m)
                if z == 0:
                    continue
                for j in kept:
                    probs[b, h, i, j] = math.exp(s[b, h, i, j] - m) / z
                    out[b, h, i] += probs[b, h, i, j] * v[b, h, j].double()
                if compensate and pruned:
                    mass = len(pruned) * math.exp(t - m) / z
                    out[b, h, i] += mass * v[b, h, pruned].double().mean(0)
                    probs[b, h, i, pruned] = mass / len(pruned)
    return out, probs


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("compensate", [True, False])
def test_top_theta_equals_its_formulas(causal, compensate):
    N = 15
    q, k, v = rand_qkv(N=N, seed=4, spread=2.0)
    theta = [0.0, 0.8, float("-inf")]  # the last head prunes nothing
    stats = {"kth_sum": torch.tensor([0.0, 1.6, 0.0], dtype=torch.float64),
             "kth_rows": torch.tensor([5.0, 2.0, 0.0], dtype=torch.float64)}
    ctx = TokenContext.sequence(N, causal, calibration={0: stats})
    res = run(f"top_theta:compensate={compensate}", q, k, v, ctx)
    keep = [[(j <= i) or not causal for j in range(N)] for i in range(N)]
    out, probs = naive_top_theta(scores64(q, k), v, keep, theta, compensate)
    assert torch.allclose(res.out.double(), out, atol=1e-5)
    assert torch.allclose(res.probs.double(), probs, atol=1e-5)
    full = run("full", q, k, v, ctx)
    assert torch.allclose(res.out[:, 2], full.out[:, 2], atol=1e-6)


def test_top_theta_row_below_threshold():
    q, k, v = rand_qkv(B=1, H=1, N=6, seed=5)
    stats = {"kth_sum": torch.tensor([1e6], dtype=torch.float64), "kth_rows": torch.tensor([1.0], dtype=torch.float64)}
    ctx = TokenContext.sequence(6, False, calibration={0: stats})
    plain = run("top_theta:compensate=false", q, k, v, ctx)
    assert bool(plain.empty.all()) and not plain.out.abs().any()
    compensated = run("top_theta", q, k, v, ctx)  # everything pruned: the V mean of all keys
    assert not compensated.empty.any()
    assert torch.allclose(compensated.out, v.mean(2, keepdim=True).expand_as(compensated.out), atol=1e-6)


def test_top_theta_without_calibration_is_refused():
    q, k, v = rand_qkv(N=5)
    with pytest.raises(VariantError, match="top_theta needs a calibration pass"):
        run("top_theta", q, k, v, TokenContext.sequence(5, True))


# ------------------------------------------------------------------ routing_2d


def brute_routing(q, k, regions, n_keep, causal, special):
    """BiFormer routing by loops: regions is a list of token lists (in order)."""
    B, H, N, _ = q.shape
    keep = torch.zeros(B, H, N, N, dtype=torch.bool)
    region_of = {t: r for r, toks in enumerate(regions) for t in toks}
    for b in range(B):
        for h in range(H):
            qm = [q[b, h, toks].double().mean(0) for toks in regions]
            km = [k[b, h, toks].double().mean(0) for toks in regions]
            for rq in range(len(regions)):
                cand = [rk for rk in range(len(regions)) if not causal or rk <= rq]
                cand.sort(key=lambda rk: (-float(qm[rq] @ km[rk]), rk))
                chosen = set(cand[:n_keep])
                for i in regions[rq]:
                    for j in range(N):
                        keep[b, h, i, j] = special[j] or (j in region_of and region_of[j] in chosen)
            for i in range(N):
                if special[i]:
                    keep[b, h, i] = True
    if causal:
        keep &= torch.ones(N, N, dtype=torch.bool).tril()
    return keep


@pytest.mark.parametrize("grid,S,n_keep", [((4, 6), 2, 2), ((5, 5), 2, 1), ((2, 3), 7, 3)])
def test_routing_2d_on_a_vit_equals_brute_force(grid, S, n_keep):
    ctx = TokenContext.vit(grid, n_prefix=1)
    rows, cols = grid
    s_r, s_c = min(S, rows), min(S, cols)
    regions = [[] for _ in range(s_r * s_c)]
    for t in range(1, ctx.n):
        r, c = int(ctx.row[t]), int(ctx.col[t])
        regions[math.floor(r * s_r / rows) * s_c + math.floor(c * s_c / cols)].append(t)
    q, k, v = rand_qkv(N=ctx.n, seed=6)
    res = run(f"routing_2d:S={S},k={n_keep}", q, k, v, ctx)
    keep = brute_routing(q, k, regions, n_keep, False, ctx.special.tolist())
    check_against(res, naive_softmax(scores64(q, k), keep), v)


@pytest.mark.parametrize("causal", [True, False])
def test_routing_2d_on_a_sequence_routes_chunks(causal):
    N, S = 20, 2  # 4 chunks of 5 tokens
    ctx = TokenContext.sequence(N, causal)
    q, k, v = rand_qkv(N=N, seed=7)
    res = run(f"routing_2d:S={S},k=2", q, k, v, ctx)
    regions = [list(range(5 * r, 5 * r + 5)) for r in range(4)]
    keep = brute_routing(q, k, regions, 2, causal, [False] * N)
    check_against(res, naive_softmax(scores64(q, k), keep), v)


# ------------------------------------------------------------------ block_topk


def brute_block_topk(q, k, b, n_blocks, causal):
    B, H, N, _ = q.shape
    blocks = [list(range(s, min(N, s + b))) for s in range(0, N, b)]
    keep = torch.zeros(B, H, N, N, dtype=torch.bool)
    for bb in range(B):
        for h in range(H):
            qm = [q[bb, h, t].double().mean(0) for t in blocks]
            km = [k[bb, h, t].double().mean(0) for t in blocks]
            for qb, rows in enumerate(blocks):
                forced = {0, qb}
                cand = [kb for kb in range(len(blocks)) if kb not in forced and (not causal or kb <= qb)]
                cand.sort(key=lambda kb: (-float(qm[qb] @ km[kb]), kb))
                chosen = forced | set(cand[: max(0, n_blocks - len(forced))])
                for i in rows:
                    for kb in chosen:
                        keep[bb, h, i, blocks[kb]] = True
    if causal:
        keep &= torch.ones(N, N, dtype=torch.bool).tril()
    return keep


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("b,n_blocks", [(5, 3), (4, 1), (6, 10)])
def test_block_topk_equals_brute_force(causal, b, n_blocks):
    N = 22  # the last block is partial
    ctx = TokenContext.sequence(N, causal)
    q, k, v = rand_qkv(N=N, seed=8)
    res = run(f"block_topk:b={b},blocks={n_blocks}", q, k, v, ctx)
    keep = brute_block_topk(q, k, b, n_blocks, causal)
    check_against(res, naive_softmax(scores64(q, k), keep), v)
    for i in range(N):  # the diagonal block and block 0 are always there
        assert bool((res.probs[:, :, i, : min(b, i + 1)] > 0).all())
        lo = i // b * b
        assert bool((res.probs[:, :, i, lo: i + 1] > 0).all())


def test_block_topk_keeps_special_tokens_global():
    ctx = TokenContext.vit((4, 4), n_prefix=2)
    q, k, v = rand_qkv(N=ctx.n, seed=9)
    res = run("block_topk:b=3,blocks=1", q, k, v, ctx)
    keep = brute_block_topk(q, k, 3, 1, False)
    keep[:, :, :2] = True
    keep[:, :, :, :2] = True
    check_against(res, naive_softmax(scores64(q, k), keep), v)


# ------------------------------------------------------------------ entmax


def naive_sparsemax(z):
    """Martins & Astudillo's algorithm on one row (numpy, float64)."""
    zs = np.sort(z)[::-1]
    cs = np.cumsum(zs)
    ks = np.arange(1, len(z) + 1)
    support = ks[1 + ks * zs > cs].max()
    tau = (cs[support - 1] - 1) / support
    return np.maximum(z - tau, 0)


def naive_entmax(z, alpha):
    """α-entmax of one row by a float64 root search on τ."""
    if len(z) == 1:
        return np.ones(1)
    x = (alpha - 1) * z

    def mass(tau):
        return (np.maximum(x - tau, 0) ** (1 / (alpha - 1))).sum() - 1

    tau = optimize.brentq(mass, x.max() - 1, x.max(), xtol=1e-14)
    return np.maximum(x - tau, 0) ** (1 / (alpha - 1))


def rowwise(fn, s, keep):
    B, H, N, Nk = s.shape
    p = torch.zeros(B, H, N, Nk, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                js = [j for j in range(Nk) if keep[i][j]]
                p[b, h, i, js] = torch.from_numpy(fn(s[b, h, i, js].numpy()))
    return p


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.2])
def test_entmax_equals_its_definition(causal, alpha):
    N = 14
    q, k, v = rand_qkv(N=N, seed=10, spread=3.0)
    res = run(f"entmax:alpha={alpha}", q, k, v, TokenContext.sequence(N, causal))
    keep = [[(j <= i) or not causal for j in range(N)] for i in range(N)]
    fn = naive_sparsemax if alpha == 2.0 else lambda z: naive_entmax(z, alpha)
    probs = rowwise(fn, scores64(q, k), keep)
    check_against(res, probs, v, atol=2e-5)
    assert torch.allclose(res.probs.sum(-1), torch.ones(()), atol=1e-5)
    assert int(((res.probs == 0) & torch.tensor(keep)).sum()) > 0  # exact zeros among allowed keys
    if causal:
        assert not res.probs.triu(1).any()


def test_entmax_alpha_one_is_softmax():
    q, k, v = rand_qkv(N=12, seed=11)
    ctx = TokenContext.sequence(12, True)
    res, full = run("entmax:alpha=1", q, k, v, ctx), run("full", q, k, v, ctx)
    assert torch.allclose(res.probs, full.probs, atol=1e-7) and torch.allclose(res.out, full.out, atol=1e-6)
    near = run("entmax:alpha=1.001", q, k, v, ctx)
    assert torch.allclose(near.probs, full.probs, atol=3e-3)


# ------------------------------------------------------------------ dam


def dam_stats(probs):
    """What summing dam's calibrate() over chunks must give, by hand."""
    return {"attn_sum": probs[0].float() + probs[1].float(), "attn_rows": torch.full((probs.shape[2],), 2.0)}


def naive_dam_keep(mean_attn, tau):
    H, N, _ = mean_attn.shape
    keep = torch.zeros(H, N, N, dtype=torch.bool)
    for h in range(H):
        a = mean_attn[h].numpy()
        pos = a > 0
        y, _ = stats.boxcox(a[pos])  # scipy's maximum-likelihood λ
        level = (y - y.min()) / (y.max() - y.min())
        kh = np.zeros((N, N), dtype=bool)
        kh[pos] = level >= tau
        np.fill_diagonal(kh, True)
        keep[h] = torch.from_numpy(kh)
    return keep & torch.ones(N, N, dtype=torch.bool).tril()


def calibrated_dam_ctx(N_cal, N, seed=12):
    q, k, _ = rand_qkv(B=2, N=N_cal, seed=seed)
    cal_ctx = TokenContext.sequence(N_cal, True)
    full = run("full", q, k, k, cal_ctx)
    variant = parse_variant("dam")
    parts = [variant.calibrate(q0, min(N_cal, q0 + 4), full.probs[:, :, q0:q0 + 4], None, cal_ctx)
             for q0 in range(0, N_cal, 4)]
    summed = {name: sum(p[name] for p in parts) for name in parts[0]}
    return summed, full.probs.double(), TokenContext.sequence(N, True, calibration={0: summed})


def test_dam_calibration_sums():
    summed, probs, _ = calibrated_dam_ctx(10, 10)
    expected = dam_stats(probs)
    assert summed["attn_sum"].shape == (3, 10, 10) and summed["attn_rows"].shape == (10,)
    assert torch.allclose(summed["attn_sum"], expected["attn_sum"], atol=1e-6)
    assert torch.equal(summed["attn_rows"].float(), expected["attn_rows"])


@pytest.mark.parametrize("N_cal,N,tau", [(16, 16, 0.1), (16, 11, 0.5), (12, 12, 0.0)])
def test_dam_equals_naive_mask(N_cal, N, tau):
    summed, probs, ctx = calibrated_dam_ctx(N_cal, N)
    mean_attn = (probs[0] + probs[1])[:, :N, :N] / 2  # a shorter target uses the top-left crop
    keep = naive_dam_keep(mean_attn, tau).expand(2, 3, N, N)
    q, k, v = rand_qkv(N=N, seed=13)
    res = run(f"dam:tau={tau}", q, k, v, ctx)
    check_against(res, naive_softmax(scores64(q, k), keep), v)
    assert not res.empty.any()
    if tau > 0:
        assert int((res.probs == 0).sum()) > N * (N - 1) // 2 * 2 * 3  # sparser than causal alone


def test_dam_refuses_a_longer_input_and_a_missing_calibration():
    _, _, ctx = calibrated_dam_ctx(8, 8)
    q, k, v = rand_qkv(N=9)
    with pytest.raises(VariantError, match="calibrated on 8 tokens"):
        run("dam", q, k, v, TokenContext.sequence(9, True, calibration=ctx.calibration))
    with pytest.raises(VariantError, match="dam needs a calibration pass"):
        run("dam", q, k, v, TokenContext.sequence(9, True))


# ------------------------------------------------------------------ properties of the whole family


def theta_stats(H=3):
    return {"kth_sum": torch.full((H,), 0.3, dtype=torch.float64), "kth_rows": torch.ones(H, dtype=torch.float64)}


SPARSE_SPECS = ["topk:k=3", "top_theta", "top_theta:compensate=false", "routing_2d:S=2,k=1",
                "block_topk:b=4,blocks=2", "entmax", "entmax:alpha=2", "dam:tau=0.3"]


def causal_ctx(N):
    summed, _, _ = calibrated_dam_ctx(N, N)
    return TokenContext.sequence(N, True, calibration={0: {**summed, **theta_stats()}})


@pytest.mark.parametrize("spec", SPARSE_SPECS)
def test_causal_rows_never_see_the_future(spec):
    N = 16
    ctx = causal_ctx(N)
    q, k, v = rand_qkv(N=N, seed=14, spread=2.0)
    res = run(spec, q, k, v, ctx)
    assert not res.probs.triu(1).any()
    assert torch.allclose(res.out, res.probs @ v, atol=1e-5)
    assert torch.allclose(res.probs.sum(-1)[~res.empty], torch.ones(()), atol=1e-5)
    # rows before token 12 do not change when tokens 12.. change (12 starts a block and a chunk here:
    # the pooled rules average the queries of a block, so only earlier blocks are independent)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, :, 12:], k2[:, :, 12:], v2[:, :, 12:] = 5.0, -3.0, 7.0
    res2 = run(spec, q2, k2, v2, ctx)
    assert torch.allclose(res.out[:, :, :12], res2.out[:, :, :12], atol=1e-5)


@pytest.mark.parametrize("spec", SPARSE_SPECS)
def test_all_masked_rows_are_zero_and_flagged(spec):
    N = 12
    ctx = causal_ctx(N)
    keep = torch.ones(2, 1, N, N, dtype=torch.bool)
    keep[0, :, 3] = False  # row 3 of item 0 may see nothing
    keep[1, :, :, 5] = False  # key 5 of item 1 is padding
    q, k, v = rand_qkv(N=N, seed=15)
    res = run(spec, q, k, v, ctx, model_mask=DenseMask(keep))
    assert torch.isfinite(res.out).all() and torch.isfinite(res.probs).all()
    assert bool(res.empty[0, :, 3].all()) and not res.out[0, :, 3].abs().any()
    assert not res.probs[1, :, :, 5].any()
    assert not res.out[res.empty].any() and not res.probs[res.empty].any()
    assert torch.allclose(res.probs.sum(-1)[~res.empty], torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("spec", ["top_theta", "routing_2d:S=2,k=2", "block_topk:b=3,blocks=2"])
def test_sinks_get_every_chunk_in_order(spec):
    N = 13
    ctx = TokenContext.vit((3, 4), n_prefix=1, calibration={0: theta_stats()})
    q, k, v = rand_qkv(N=N, seed=16)
    seen = []
    res = run(spec, q, k, v, ctx, chunk=4, sinks=(wide_sink(lambda q0, q1, p, s: seen.append((q0, q1, p.clone(), s))),))
    assert [(a, b) for a, b, _, _ in seen] == [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert torch.equal(torch.cat([p for _, _, p, _ in seen], dim=2), res.probs)
    if spec != "top_theta":  # (top_theta compensates: pruned keys keep a share of the mass)
        for _, _, p, s in seen:  # the scores show what was dropped
            assert not p[torch.isneginf(s)].any()


@pytest.mark.parametrize("offset", [0.0, 2.0**24, 3e7, 1e9])
def test_sparsemax_with_huge_scores(offset):
    """Issue 15 item 9: scores beyond 2^24 in float32 once gave `index -1 is out of bounds`.
    Sparsemax is shift invariant, so a huge common offset changes nothing."""
    from kernels.variants.content import sparsemax

    x = torch.tensor([[3.0, 1.0, 2.5, -1.0, float("-inf")]]) + offset  # float32: the offset rounds the scores
    p = sparsemax(x)
    torch.testing.assert_close(p.double(), sparsemax(x.double() - x.double().amax()), atol=1e-6, rtol=0)
    assert p.sum().item() == pytest.approx(1.0) and p[0, 4] == 0
    s = torch.full((1, 1, 2, 6), offset) + torch.randn(1, 1, 2, 6)
    ctx = TokenContext.sequence(6, False)
    probs = parse_variant("entmax:alpha=2").row_probs(s, torch.arange(2), torch.arange(6), ctx)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(1, 1, 2))
