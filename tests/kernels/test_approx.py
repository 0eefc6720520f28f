"""Approximations (catalogue family d) against their formulas computed naively in float64,
run through the reference path the app uses."""

from __future__ import annotations

import math

import pytest
import torch
from sink_util import wide_sink
from torch.utils._python_dispatch import TorchDispatchMode

from kernels.context import TokenContext
from kernels.reference import attention
from kernels.variants import REGISTRY, VariantError, parse_variant

D = 8
SCALE = D**-0.5


def rand_qkv(B=2, H=3, N=13, D=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, D, generator=g) for _ in range(3))


class DenseMask:
    def __init__(self, keep):  # (B, 1, N, Nk) bool
        self.keep = keep

    def rows(self, q0, q1):
        return self.keep[:, :, q0:q1]


def padding(B, N, pad_key=None, dead_row=None):
    """A model mask: key `pad_key` of item 1 is padding; row `dead_row` of item 0 sees nothing."""
    keep = torch.ones(B, 1, N, N, dtype=torch.bool)
    if pad_key is not None:
        keep[1, :, :, pad_key] = False
    if dead_row is not None:
        keep[0, :, dead_row] = False
    return DenseMask(keep)


def key_valid(B, H, N, pad_key):
    ok = torch.ones(B, H, N, dtype=torch.bool)
    if pad_key is not None:
        ok[1, :, pad_key] = False
    return ok


def run(spec, q, k, v, ctx, chunk=5, model_mask=None, sinks=(), want_probs=True):
    variant = parse_variant(spec)
    variant.check(ctx)
    return attention(q, k, v, scale=SCALE, ctx=ctx, variant=variant, want_probs=want_probs, chunk=chunk,
                     model_mask=model_mask, sinks=sinks)


def softmax64(s, ok=None):
    """Row softmax in float64 over entries where ok (…, Nk) is True."""
    if ok is not None:
        s = s.masked_fill(~ok, float("-inf"))
    return torch.softmax(s, dim=-1)


def check(res, out64, probs64=None, atol=1e-5):
    assert torch.allclose(res.out.double(), out64, atol=atol)
    if probs64 is not None:
        assert torch.allclose(res.probs.double(), probs64, atol=atol)
    assert torch.isfinite(res.out).all()


def identity_holds(res, v, rows_sum_to_one=True):
    assert torch.allclose(res.out, res.probs @ v, atol=1e-5)
    if rows_sum_to_one:
        sums = res.probs.sum(-1)
        assert torch.allclose(sums[~res.empty], torch.ones(()), atol=1e-5)
        assert not sums[res.empty].any()


# ------------------------------------------------------------------ registry, parameters, targets

FAMILY_D = {
    "linear_efficient": {"bidirectional", "vit"},
    "focused_linear": {"vit", "causal", "bidirectional"},
    "agent": {"vit"},
    "linformer": {"bidirectional", "vit"},
    "kv_pool_2d": {"vit"},
    "delta_correction": {"vit", "causal", "bidirectional"},
}


@pytest.mark.parametrize("name", sorted(FAMILY_D))
def test_registered_with_catalogue_metadata(name):
    cls = REGISTRY[name]
    assert cls.family == "approx"
    assert set(cls.applies_to) == FAMILY_D[name]
    assert "20" in cls.__doc__


def test_defaults_follow_the_catalogue():
    assert parse_variant("focused_linear").values == {"p": 3.0}
    assert parse_variant("agent").values == {"agents": 49}
    assert parse_variant("linformer").values == {"k": 64, "proj": "mean", "seed": 0}
    assert parse_variant("kv_pool_2d").values == {"r": 2}
    delta = parse_variant("delta_correction")  # the default inner variant is a registered sparse one
    assert delta.every == 64 and delta.inner_variant.spec() == parse_variant("sliding_window:w=64,sinks=4").spec()


@pytest.mark.parametrize("spec,param", [
    ("focused_linear:p=0.5", "p"), ("agent:agents=0", "agents"), ("agent:agents=8", "agents"),
    ("linformer:k=0", "k"), ("linformer:proj=svd", "proj"), ("linformer:seed=-1", "seed"),
    ("kv_pool_2d:r=0", "r"), ("delta_correction:every=0", "every"),
    ("delta_correction:inner=nonsense", "inner"), ("delta_correction:inner=[topk:k=0]", "inner"),
    ("delta_correction:inner=[delta_correction:every=2]", "inner"),
])
def test_bad_parameters_name_the_parameter(spec, param):
    with pytest.raises(VariantError, match=rf"\b{param}\b"):
        parse_variant(spec)


@pytest.mark.parametrize("spec,kind", [
    ("linear_efficient", "causal"), ("linformer", "causal"), ("agent", "causal"), ("agent", "bidirectional"),
    ("kv_pool_2d", "causal"), ("kv_pool_2d", "bidirectional"), ("delta_correction:inner=dam", "vit"),
])
def test_variants_refuse_other_models(spec, kind):
    ctx = TokenContext.vit((3, 3)) if kind == "vit" else TokenContext.sequence(9, kind == "causal")
    with pytest.raises(VariantError, match="applies to"):
        parse_variant(spec).check(ctx)


# ------------------------------------------------------------------ linear_efficient


@pytest.mark.parametrize("pad_key", [None, 4])
def test_linear_efficient_equals_its_formula(pad_key):
    B, H, N = 2, 3, 17
    q, k, v = rand_qkv(N=N, seed=1)
    res = run("linear_efficient", q, k, v, TokenContext.sequence(N, False), model_mask=padding(B, N, pad_key))
    q_feat = torch.softmax(q.double(), dim=-1)
    ok = key_valid(B, H, N, pad_key)
    k_pos = softmax64(k.double().transpose(-1, -2), ok[:, :, None, :]).transpose(-1, -2)  # over positions
    probs = q_feat @ k_pos.transpose(-1, -2)
    check(res, q_feat @ (k_pos.transpose(-1, -2) @ v.double()), probs)
    identity_holds(res, v)


# ------------------------------------------------------------------ focused_linear


def phi64(x, p):
    pos = torch.relu(x.double())
    powered = pos**p
    norm = powered.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, pos.norm(dim=-1, keepdim=True) * powered / norm, 0.0)


def naive_focused(q, k, v, p, causal, key_ok):
    """out_i = Σ_j (φq_i·φk_j) v_j / Σ_j φq_i·φk_j over visible keys, one row at a time."""
    B, H, N, _ = q.shape
    fq, fk = phi64(q, p), phi64(k, p)
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    probs = torch.zeros(B, H, N, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                js = [j for j in range(N) if key_ok[b, h, j] and (j <= i or not causal)]
                w = torch.stack([fq[b, h, i] @ fk[b, h, j] for j in js])
                if w.sum() > 0:
                    probs[b, h, i, js] = w / w.sum()
                    out[b, h, i] = probs[b, h, i] @ v[b, h].double()
    return out, probs


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("p", [3.0, 1.0, 5.5])
@pytest.mark.parametrize("pad_key", [None, 6])
def test_focused_linear_equals_its_formula(causal, p, pad_key):
    B, H, N = 2, 3, 19
    q, k, v = rand_qkv(N=N, seed=2)
    q, k = q + 0.5, k + 0.5  # mostly positive, so φ rarely vanishes
    res = run(f"focused_linear:p={p}", q, k, v, TokenContext.sequence(N, causal), chunk=4,
              model_mask=padding(B, N, pad_key))
    out, probs = naive_focused(q, k, v, p, causal, key_valid(B, H, N, pad_key))
    check(res, out, probs)
    identity_holds(res, v)
    if causal:
        assert not res.probs.triu(1).any()


def test_focused_linear_rows_with_no_overlap_are_empty():
    q, k, v = rand_qkv(B=1, H=1, N=6, seed=3)
    q[..., 2, :] = -1.0  # φ(q_2) = 0
    k = k.abs()
    res = run("focused_linear", q, k, v, TokenContext.sequence(6, True))
    assert bool(res.empty[0, 0, 2]) and int(res.empty.sum()) == 1
    assert torch.isfinite(res.out).all() and not res.out[0, 0, 2].any() and not res.probs[0, 0, 2].any()


# ------------------------------------------------------------------ agent


def naive_agents(q, ctx, side):
    """Adaptive average pooling of the patch queries, written out with its bins."""
    rows, cols = ctx.grid
    a_r, a_c = min(side, rows), min(side, cols)
    patch_at = {(int(ctx.row[t]), int(ctx.col[t])): t for t in range(ctx.n) if not ctx.special[t]}
    agents = []
    for i in range(a_r):
        for j in range(a_c):
            r0, r1 = math.floor(i * rows / a_r), math.ceil((i + 1) * rows / a_r)
            c0, c1 = math.floor(j * cols / a_c), math.ceil((j + 1) * cols / a_c)
            toks = [patch_at[(r, c)] for r in range(r0, r1) for c in range(c0, c1)]
            agents.append(q[:, :, toks].double().mean(2))
    return torch.stack(agents, dim=2)  # (B,H,n,D)


@pytest.mark.parametrize("grid,agents,n_prefix", [((4, 6), 4, 1), ((5, 5), 9, 2), ((3, 3), 49, 1), ((7, 7), 49, 1)])
def test_agent_equals_its_formula(grid, agents, n_prefix):
    ctx = TokenContext.vit(grid, n_prefix=n_prefix)
    q, k, v = rand_qkv(N=ctx.n, seed=4)
    res = run(f"agent:agents={agents}", q, k, v, ctx)
    a = naive_agents(q, ctx, math.isqrt(agents))
    agent_reads = softmax64(a @ k.double().transpose(-1, -2) * SCALE)
    query_reads = softmax64(q.double() @ a.transpose(-1, -2) * SCALE)
    probs = query_reads @ agent_reads
    check(res, query_reads @ (agent_reads @ v.double()), probs)
    identity_holds(res, v)
    if grid == (3, 3):  # a grid smaller than √n: every patch query is an agent
        assert a.shape[2] == 9 and torch.allclose(a, q[:, :, 1:].double())


# ------------------------------------------------------------------ linformer


def segment_mean_matrix(k, N, key_ok):
    """E (B,H,k,N): row s averages the valid keys j with ⌊j·k/N⌋ = s."""
    B, H, _ = key_ok.shape
    E = torch.zeros(B, H, k, N, dtype=torch.float64)
    for s in range(k):
        members = [j for j in range(N) if j * k // N == s]
        for b in range(B):
            for h in range(H):
                valid = [j for j in members if key_ok[b, h, j]]
                E[b, h, s, valid] = 1.0 / len(valid)
    return E


@pytest.mark.parametrize("proj", ["mean", "random"])
@pytest.mark.parametrize("k_proj", [5, 1])
@pytest.mark.parametrize("pad_key", [None, 7])
def test_linformer_equals_its_formula(proj, k_proj, pad_key):
    B, H, N = 2, 3, 23
    q, k, v = rand_qkv(N=N, seed=5)
    ok = key_valid(B, H, N, pad_key)
    res = run(f"linformer:k={k_proj},proj={proj},seed=3", q, k, v, TokenContext.sequence(N, False),
              model_mask=padding(B, N, pad_key))
    if proj == "mean":
        E = segment_mean_matrix(k_proj, N, ok)
    else:
        E = (torch.randn(k_proj, N, generator=torch.Generator().manual_seed(3)) / math.sqrt(k_proj)).double()
        E = E * ok[:, :, None, :]
    reads = softmax64(q.double() @ (E @ k.double()).transpose(-1, -2) * SCALE)
    check(res, reads @ (E @ v.double()), reads @ E)
    identity_holds(res, v, rows_sum_to_one=proj == "mean")


def test_linformer_random_projection_is_seeded_and_scaled():
    q, k, v = rand_qkv(N=30, seed=6)
    ctx = TokenContext.sequence(30, False)
    a, b, c = (run(f"linformer:k=4,proj=random,seed={s}", q, k, v, ctx) for s in (1, 1, 2))
    assert torch.equal(a.out, b.out) and not torch.allclose(a.out, c.out)
    big = parse_variant("linformer:k=64,proj=random")
    from kernels.variants.approx import random_projection

    E = random_projection(64, 4096, big.seed)
    assert abs(float(E.std()) * math.sqrt(64) - 1) < 0.02 and abs(float(E.mean())) < 0.01


def test_linformer_mean_with_k_at_least_n_is_full_attention():
    q, k, v = rand_qkv(N=12, seed=7)
    ctx = TokenContext.sequence(12, False)
    res, full = run("linformer:k=64", q, k, v, ctx), run("full", q, k, v, ctx)
    assert torch.allclose(res.out, full.out, atol=1e-5) and torch.allclose(res.probs, full.probs, atol=1e-6)


# ------------------------------------------------------------------ kv_pool_2d


def naive_kv_pool(q, k, v, ctx, r, key_ok):
    B, H, N, _ = q.shape
    keys = [[t] for t in range(N) if ctx.special[t]]
    rows, cols = ctx.grid
    for r0 in range(0, rows, r):
        for c0 in range(0, cols, r):
            keys.append([t for t in range(N) if not ctx.special[t]
                         and r0 <= ctx.row[t] < r0 + r and c0 <= ctx.col[t] < c0 + r])
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    probs = torch.zeros(B, H, N, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            groups = [[t for t in g if key_ok[b, h, t]] for g in keys]
            groups = [g for g in groups if g]
            kp = torch.stack([k[b, h, g].double().mean(0) for g in groups])
            vp = torch.stack([v[b, h, g].double().mean(0) for g in groups])
            reads = softmax64(q[b, h].double() @ kp.T * SCALE)
            out[b, h] = reads @ vp
            for gi, g in enumerate(groups):
                probs[b, h][:, g] = reads[:, gi:gi + 1] / len(g)
    return out, probs


@pytest.mark.parametrize("grid,r,n_prefix", [((4, 4), 2, 1), ((5, 5), 2, 2), ((3, 7), 3, 1), ((4, 6), 1, 1)])
@pytest.mark.parametrize("pad_key", [None, 5])
def test_kv_pool_2d_equals_its_formula(grid, r, n_prefix, pad_key):
    ctx = TokenContext.vit(grid, n_prefix=n_prefix)
    B, H, N = 2, 3, ctx.n
    q, k, v = rand_qkv(N=N, seed=8)
    res = run(f"kv_pool_2d:r={r}", q, k, v, ctx, model_mask=padding(B, N, pad_key))
    out, probs = naive_kv_pool(q, k, v, ctx, r, key_valid(B, H, N, pad_key))
    check(res, out, probs)
    identity_holds(res, v)
    if r == 1 and pad_key is None:  # no pooling: full attention
        full = run("full", q, k, v, ctx)
        assert torch.allclose(res.out, full.out, atol=1e-5)


# ------------------------------------------------------------------ delta_correction


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("every,chunk", [(4, 5), (3, 3), (64, 7), (1, 4)])
def test_delta_correction_equals_its_formula(causal, every, chunk):
    N = 17
    ctx = TokenContext.sequence(N, causal)
    q, k, v = rand_qkv(N=N, seed=9)
    inner = "topk:k=3"
    res = run(f"delta_correction:inner=[{inner}],every={every}", q, k, v, ctx, chunk=chunk)
    sparse, full = run(inner, q, k, v, ctx), run("full", q, k, v, ctx)
    anchor = torch.arange(N) // every * every
    out = sparse.out + full.out[:, :, anchor] - sparse.out[:, :, anchor]
    probs = sparse.probs + full.probs[:, :, anchor] - sparse.probs[:, :, anchor]
    check(res, out.double(), probs.double())
    identity_holds(res, v)
    if causal:
        assert not res.probs.triu(1).any()
    if every == 1:  # every row is an anchor: full attention
        assert torch.allclose(res.out, full.out, atol=1e-5)
    assert res.lse is None


def test_delta_correction_spec_round_trips_and_wraps_approximations():
    v = parse_variant("delta_correction:inner=[linformer:k=4,proj=random],every=5")
    assert v.inner_variant.values == {"k": 4, "proj": "random", "seed": 0}
    again = parse_variant(v.spec())
    assert again.spec() == v.spec() and again.every == 5
    assert parse_variant("delta_correction:inner=topk").inner_variant.name == "topk"
    ctx = TokenContext.sequence(14, False)
    q, k, vv = rand_qkv(N=14, seed=10)
    res = run(v.spec(), q, k, vv, ctx, chunk=4)
    identity_holds(res, vv, rows_sum_to_one=False)  # a random projection's rows do not sum to 1


def test_delta_correction_forwards_calibration():
    v = parse_variant("delta_correction:inner=[top_theta:k=2],every=3")
    assert v.needs_calibration and not parse_variant("delta_correction:inner=topk").needs_calibration
    scores = torch.tensor([[[[3.0, 1.0, 2.0]]]])
    ctx = TokenContext.sequence(1, False)
    assert v.calibrate(0, 1, None, scores, ctx)["kth_sum"].tolist() == [2.0]


# ------------------------------------------------------------------ properties of the whole family

SPECS = [  # (spec, kind)
    ("linear_efficient", "bidirectional"), ("focused_linear", "causal"), ("focused_linear", "bidirectional"),
    ("agent:agents=4", "vit"), ("linformer:k=4", "bidirectional"), ("linformer:k=4,proj=random", "bidirectional"),
    ("kv_pool_2d", "vit"), ("delta_correction:inner=[topk:k=2],every=4", "causal"),
]


def ctx_of(kind):
    return TokenContext.vit((4, 4), n_prefix=1) if kind == "vit" else TokenContext.sequence(17, kind == "causal")


@pytest.mark.parametrize("spec,kind", SPECS)
def test_all_masked_rows_are_zero_and_flagged(spec, kind):
    ctx = ctx_of(kind)
    q, k, v = rand_qkv(N=ctx.n, seed=11)
    q, k = q.abs(), k.abs()  # φ never vanishes: empty rows come from the mask only
    res = run(spec, q, k, v, ctx, model_mask=padding(2, ctx.n, pad_key=3, dead_row=9))
    assert torch.isfinite(res.out).all() and torch.isfinite(res.probs).all()
    assert bool(res.empty[0, :, 9].all()) and not res.out[0, :, 9].any() and not res.probs[0, :, 9].any()
    assert int(res.empty.sum()) == res.empty.shape[1]  # only that row
    assert not res.probs[1, :, :, 3].any()  # padding gets no weight


@pytest.mark.parametrize("spec,kind", SPECS)
def test_sinks_get_implied_probs_and_model_scores(spec, kind):
    ctx = ctx_of(kind)
    q, k, v = rand_qkv(N=ctx.n, seed=12)
    seen = []
    res = run(spec, q, k, v, ctx, chunk=4, sinks=(wide_sink(lambda q0, q1, p, s: seen.append((q0, q1, p.clone(), s))),))
    assert [a for a, _, _, _ in seen] == list(range(0, ctx.n, 4))
    assert torch.equal(torch.cat([p for _, _, p, _ in seen], dim=2), res.probs)
    if not spec.startswith("delta"):  # (delta hands on its inner variant's scores)
        s = torch.cat([s for _, _, _, s in seen], dim=2)
        expected = q @ k.transpose(-1, -2) * SCALE
        if ctx.causal:
            expected = expected.masked_fill(torch.ones(ctx.n, ctx.n, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(s, expected, atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any torch op produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("spec,kind", [s for s in SPECS if not s[0].startswith("delta")])
def test_no_n_by_n_tensor_without_probs(spec, kind):
    N = 144 if kind != "vit" else None
    ctx = TokenContext.vit((12, 12), n_prefix=1) if kind == "vit" else TokenContext.sequence(N, kind == "causal")
    q, k, v = rand_qkv(B=1, H=1, N=ctx.n, seed=13)
    with LargestTensor() as seen:
        run(spec, q, k, v, ctx, chunk=16, want_probs=False)
    assert seen.largest <= 16 * ctx.n  # one query chunk against every key at most
