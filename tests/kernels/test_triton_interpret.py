"""Triton kernels under the interpreter (CPU, tiny shapes, float32) against the reference path.

Without CUDA the kernels run under TRITON_INTERPRET=1 (set by conftest.py); on a machine with a
GPU the same tiny cases run compiled on it (DEV), with the same pinned 16 × 16 tiles.
Every supported family is compared with kernels.reference.attention, with grouped-query attention
(4 query heads, 2 kv heads; the reference gets k and v expanded), on sequences (causal and not)
and on a ViT grid with a CLS token. The maps pass is checked against the dense probabilities:
pooled maps = block means (uneven bins), tiles = dense slices, row statistics = definitions.
"""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernels are defined (also done by conftest.py)
    os.environ["TRITON_INTERPRET"] = "1"

from kernels.context import TokenContext  # noqa: E402
from kernels.maps import MapsSink, exact_tile, token_distance  # noqa: E402
from kernels.reference import attention  # noqa: E402
from kernels.variants import VariantError, parse_variant  # noqa: E402
from kernels.variants.static_masks import dilated_window  # noqa: E402


def _kernels():
    """The kernel modules, re-imported if something defined them before TRITON_INTERPRET was set."""
    fwd = importlib.import_module("kernels.triton.attention_fwd")
    maps = importlib.import_module("kernels.triton.maps")
    if os.environ.get("TRITON_INTERPRET") == "1" and type(fwd._attn_fwd).__name__ != "InterpretedFunction":
        fwd = importlib.reload(fwd)
        maps = importlib.reload(maps)
    return fwd, maps


FWD, MAPS = _kernels()
from kernels.triton.block_mask import block_mask_from_mask_mod, block_mask_from_table  # noqa: E402
from kernels.triton.spec import KernelSpec, kernel_spec  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
TILES = {"block_m": 16, "block_n": 16}  # small tiles: several blocks, partial and full, even at N = 40
H, HKV, D, SCALE = 4, 2, 16, 0.35
SEQ_N = 40  # not a multiple of the 16-wide tiles: overhanging key blocks are exercised
GRID = (6, 6)  # + CLS = 37 tokens


def seq_ctx(causal: bool, n: int = SEQ_N) -> TokenContext:
    return TokenContext.sequence(n, causal=causal).with_layer(0, H)


def vit_ctx() -> TokenContext:
    return TokenContext.vit(GRID, n_prefix=1).with_layer(0, H)


def qkv(n: int, *, b: int = 1, d: int = D, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, H, n, d, generator=g)
    k = torch.randn(b, HKV, n, d, generator=g)
    v = torch.randn(b, HKV, n, d, generator=g)
    return q.to(DEV, dtype), k.to(DEV, dtype), v.to(DEV, dtype)


def fwd(q, k, v, variant, ctx, **kw):
    return FWD.triton_attention(q, k, v, scale=SCALE, variant=variant, ctx=ctx, **{**TILES, **kw})


def maps_pass(q, k, lse, variant, ctx, **kw):
    return MAPS.triton_maps(q, k, lse, scale=SCALE, ctx=ctx, variant=variant, **{**TILES, **kw})


def expand(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(H // x.shape[1], dim=1)


def reference(q, k, v, variant, ctx, model_mask=None, want_probs=False):
    return attention(q, expand(k), expand(v), scale=SCALE, ctx=ctx, variant=variant, model_mask=model_mask,
                     want_probs=want_probs)


def assert_same(res, ref, atol=2e-5):
    assert not torch.isnan(res.out).any() and not torch.isnan(res.lse).any()
    torch.testing.assert_close(res.out, ref.out, atol=atol, rtol=atol)
    assert torch.equal(res.empty, ref.empty)
    assert torch.equal(torch.isneginf(res.lse), torch.isneginf(ref.lse))
    live = ~ref.empty
    torch.testing.assert_close(res.lse[live], ref.lse[live], atol=atol, rtol=atol)


SEQ_VARIANTS = [
    "full", "sliding_window:w=5,sinks=2", "strided:l=6", "fixed:l=8,c=2", "dilated_window:w=3,d=3",
    "decay_1d", "block_topk:b=8,blocks=2", "alibi", "softcap:c=2", "document:lengths=9;14",
]
VIT_VARIANTS = [
    "full", "window_2d:M=3", "window_2d:M=4,shift=true", "neighborhood_2d:k=1", "manhattan_decay", "gaussian_2d",
    "gaussian_2d:sigmas=1;3,weights=1;2", "polyline_path:alpha=0.8,beta=0.6", "polyline_path:edge_aware=true",
    "sliding_window:w=4", "fixed", "decay_1d", "block_topk:b=8,blocks=2", "routing_2d:S=3,k=2",
    "head_ablation:heads=0.1", "alibi", "softcap:c=1.5", "document:lengths=10",
]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("spec", SEQ_VARIANTS)
def test_forward_sequence(spec, causal):
    variant, ctx = parse_variant(spec), seq_ctx(causal)
    q, k, v = qkv(SEQ_N)
    assert_same(fwd(q, k, v, variant, ctx), reference(q, k, v, variant, ctx))


def test_forward_star_causal():
    variant, ctx = parse_variant("star:b=10,q_tokens=5"), seq_ctx(True)
    q, k, v = qkv(SEQ_N)
    assert_same(fwd(q, k, v, variant, ctx), reference(q, k, v, variant, ctx))


@pytest.mark.parametrize("spec", VIT_VARIANTS)
def test_forward_vit_with_cls(spec):
    variant, ctx = parse_variant(spec), vit_ctx()
    q, k, v = qkv(ctx.n)
    assert_same(fwd(q, k, v, variant, ctx), reference(q, k, v, variant, ctx))


def test_polyline_path_lse_are_the_two_softmax_normalisers():
    from kernels.variants.score_mods import polyline_biases

    variant, ctx = parse_variant("polyline_path:alpha=0.7,beta=0.9"), vit_ctx().to(DEV)
    q, k, v = qkv(ctx.n)
    res = fwd(q, k, v, variant, ctx)
    s = (q @ expand(k).transpose(-1, -2)).double() * SCALE
    la, lb = variant.log_decays(k, ctx)
    row, col = ctx.row.clamp(min=0), ctx.col.clamp(min=0)
    special = ctx.special[:, None] | ctx.special[None, :]
    for path, lse in zip(polyline_biases(la, lb, row[:, None], col[:, None], row[None], col[None]), res.path_lse):
        want = torch.logsumexp(s + torch.where(special, 0.0, path), dim=-1)
        torch.testing.assert_close(lse.double(), want, atol=2e-5, rtol=2e-5)


def test_block_sparse_table_matches_dense_mask():
    """The block-sparse family: a coarse table (per head) at 8×12 tokens per cell, not the tile size."""
    ctx = seq_ctx(False)
    g = torch.Generator().manual_seed(3)
    table = torch.rand(H, 5, 4, generator=g) < 0.5
    table[:, :, 0] = True
    table = table.to(DEV)
    spec = KernelSpec.block_sparse(table, (8, 12))
    q, k, v = qkv(SEQ_N)
    res = fwd(q, k, v, None, ctx, spec=spec)
    pos = torch.arange(SEQ_N, device=DEV)
    dense = table[:, pos // 8][:, :, pos // 12]  # (H, N, N)
    assert_same(res, reference(q, k, v, parse_variant("full"), ctx, model_mask=DenseMask(dense[None])))


@pytest.mark.parametrize("sparse", [32, (16, 32)])
def test_tiles_subdivide_sparse_blocks(sparse):
    """Compute tiles of 16 inside block-mask blocks of 32 (FlexAttention's SPARSE_*_MULTIPLE)."""
    variant, ctx = parse_variant("sliding_window:w=6,sinks=1"), seq_ctx(True, n=56)
    q, k, v = qkv(56)
    res = fwd(q, k, v, variant, ctx, sparse_block=sparse)
    assert_same(res, reference(q, k, v, variant, ctx))


def test_masked_blocks_are_never_read():
    """Keys in blocks the block mask skips are poisoned with NaN: the rows that skip them stay exact."""
    variant, ctx = parse_variant("sliding_window:w=3,sinks=0"), seq_ctx(False, n=64)
    q, k, v = qkv(64)
    ref = reference(q, k, v, variant, ctx)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 48:] = float("nan")
    v2[:, :, 48:] = float("nan")
    res = fwd(q, k2, v2, variant, ctx)
    torch.testing.assert_close(res.out[:, :, :32], ref.out[:, :, :32], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(res.lse[:, :, :32], ref.lse[:, :, :32], atol=2e-5, rtol=2e-5)


def test_block_mask_classifies_tiles():
    n, bs = 50, 16
    mask_mod = lambda b, h, qi, kj: (kj <= qi) & (qi - kj <= 20)  # noqa: E731
    bm = block_mask_from_mask_mod(mask_mod, None, None, n, n, block_m=bs, block_n=bs)
    partial, full = bm.dense_blocks()
    dense = mask_mod(0, 0, torch.arange(n)[:, None], torch.arange(n)[None, :])
    nb = math.ceil(n / bs)
    for a in range(nb):
        for c in range(nb):
            tile = dense[a * bs:(a + 1) * bs, c * bs:(c + 1) * bs]
            overhang = (c + 1) * bs > n
            assert bool(full[0, 0, a, c]) == (bool(tile.all()) and not overhang)
            assert bool(partial[0, 0, a, c]) == (bool(tile.any()) and not bool(full[0, 0, a, c]))
    assert bm.kv_indices.shape == (1, 1, nb, nb) and bm.kv_num_blocks.dtype == torch.int32
    # indices listed first, ascending
    for a in range(nb):
        idx = bm.kv_indices[0, 0, a, : bm.kv_num_blocks[0, 0, a]].tolist()
        assert idx == sorted(idx) and all(partial[0, 0, a, i] for i in idx)
    assert 0 < bm.visited_fraction() < 1
    small = block_mask_from_mask_mod(mask_mod, None, None, n, n, block_m=bs, block_n=bs, chunk_elems=100)
    assert all(torch.equal(a, b) for a, b in zip(small.dense_blocks(), bm.dense_blocks()))  # chunking is invisible


def test_block_mask_key_padding_and_table():
    bm = block_mask_from_mask_mod(lambda b, h, qi, kj: kj <= qi, None, None, 32, 32, block_m=8, block_n=8)
    valid = torch.ones(2, 32, dtype=torch.bool)
    valid[1, :12] = False  # batch 1: first block padded, second half padded
    padded = bm.with_key_padding(valid)
    partial, full = padded.dense_blocks()
    assert padded.shape == (2, 1, 4, 4)
    assert not partial[1, 0, :, 0].any() and not full[1, 0, :, 0].any()  # fully padded key block: gone
    assert not full[1, 0, :, 1].any() and partial[1, 0, 1:, 1].all()  # half padded: partial
    assert torch.equal(full[0], bm.dense_blocks()[1][0])
    tb = block_mask_from_table(torch.eye(4, dtype=torch.bool), (8, 8), 32, 32, block_m=16, block_n=16)
    partial, full = tb.dense_blocks()
    assert torch.equal(full[0, 0], torch.zeros(2, 2, dtype=torch.bool))
    assert torch.equal(partial[0, 0], torch.eye(2, dtype=torch.bool))


class PaddingMask:
    """A model mask hiding padding keys (B, Nk), like a padded batch."""

    def __init__(self, valid):
        self.valid = valid

    def rows(self, q0, q1):
        return self.valid[:, None, None, :].expand(-1, 1, q1 - q0, -1)


class DenseMask:
    def __init__(self, dense):
        self.dense = dense

    def rows(self, q0, q1):
        return self.dense[:, :, q0:q1]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_key_padding_and_empty_rows(causal):
    """Padding keys from the model's mask; a batch item with no key gives zeros, lse −∞, never NaN."""
    variant, ctx = parse_variant("sliding_window:w=3,sinks=0"), seq_ctx(causal, n=36)
    q, k, v = qkv(36, b=2)
    valid = torch.ones(2, 36, dtype=torch.bool, device=DEV)
    valid[0, :7] = False  # left padding: with causality the first rows see no key
    valid[1] = False
    mask = PaddingMask(valid)
    res = fwd(q, k, v, variant, ctx, model_mask=mask)
    ref = reference(q, k, v, variant, ctx, model_mask=mask)
    assert_same(res, ref)
    assert res.empty[1].all() and (res.out[1] == 0).all() and torch.isneginf(res.lse[1]).all()


def test_causal_model_mask_on_a_bidirectional_context():
    """A model mask that is causal + padding is run as the kernel's causal switch plus key padding."""
    ctx = seq_ctx(False, n=24)
    q, k, v = qkv(24, b=2)
    valid = torch.ones(2, 24, dtype=torch.bool, device=DEV)
    valid[1, :5] = False
    dense = valid[:, None, None, :] & torch.ones(24, 24, dtype=torch.bool, device=DEV).tril()
    full = parse_variant("full")
    res = fwd(q, k, v, full, ctx, model_mask=DenseMask(dense))
    assert_same(res, reference(q, k, v, full, ctx, model_mask=DenseMask(dense)))


def test_other_model_masks_are_refused():
    ctx = seq_ctx(False, n=20)
    q, k, v = qkv(20)
    dense = (torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0)) < 0.5).to(DEV)
    with pytest.raises(VariantError):
        fwd(q, k, v, parse_variant("full"), ctx, model_mask=DenseMask(dense))


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_inputs(dtype, atol):
    variant, ctx = parse_variant("decay_1d"), seq_ctx(True, n=32)
    q, k, v = qkv(32, dtype=dtype)
    res = fwd(q, k, v, variant, ctx)
    assert res.out.dtype == torch.float32
    assert_same(res, reference(q, k, v, variant, ctx), atol=atol)


def test_head_dim_not_a_power_of_two():
    variant, ctx = parse_variant("strided:l=5"), seq_ctx(True, n=33)
    q, k, v = qkv(33, d=24)
    assert_same(fwd(q, k, v, variant, ctx), reference(q, k, v, variant, ctx))


def test_kernel_spec_covers_the_families_and_refuses_the_rest():
    seq, vit = seq_ctx(True), vit_ctx()
    for name in ["full", "sliding_window", "strided", "fixed", "dilated_window", "star", "decay_1d", "block_topk"]:
        assert kernel_spec(parse_variant(name), seq) is not None, name
    for name in ["window_2d", "neighborhood_2d", "manhattan_decay", "gaussian_2d", "polyline_path", "routing_2d"]:
        assert kernel_spec(parse_variant(name), vit) is not None, name
    for name in ["topk", "entmax", "relaxed", "linformer"]:
        assert kernel_spec(parse_variant(name), seq) is None, name
    assert kernel_spec(parse_variant("window_2d"), seq) is None  # a ViT-only variant on a sequence
    spec = kernel_spec(parse_variant("dilated_window:w=3,d=2"), seq)
    assert spec.ints == (3, 2) and spec.causal and spec.rule is dilated_window  # the variant's own rule
    for name in ["prefix_lm", "document:lengths=4;5,inner=topk", "topk"]:  # widens / content inside / content
        assert kernel_spec(parse_variant(name), seq) is None, name
    for name in ["alibi", "softcap", "document:lengths=4;5", "prefix_lm:n=0"]:
        assert (kernel_spec(parse_variant(name), seq) is not None) == (name != "prefix_lm:n=0"), name


# ------------------------------------------------------------------ the maps pass


def block_means(p: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of p (..., N, Nk) over the tiles of bins ⌊i·R/N⌋, by brute force."""
    n, nk = p.shape[-2:]
    rq, rk = min(r, n), min(r, nk)
    bq, bk = torch.arange(n, device=p.device) * rq // n, torch.arange(nk, device=p.device) * rk // nk
    out = torch.zeros(*p.shape[:-2], rq, rk, dtype=torch.float64, device=p.device)
    for a in range(rq):
        for c in range(rk):
            out[..., a, c] = p[..., bq == a, :][..., :, bk == c].double().mean((-1, -2))
    return out


def dense_stats(p: torch.Tensor, ctx: TokenContext) -> dict[str, torch.Tensor]:
    n = p.shape[-1]
    pos = torch.arange(n, device=p.device)
    d = token_distance(ctx.to(p.device), pos[:, None], pos[None, :]).double()
    return {
        "entropy": -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1),
        "distance": (p * d).sum(-1),
        "sink": p[..., 0],
        "maxp": p.amax(-1),
    }


MAPS_CASES = [
    ("full", "causal"), ("sliding_window:w=5,sinks=2", "bidir"), ("decay_1d", "causal"), ("strided:l=6", "bidir"),
    ("full", "vit"), ("window_2d:M=4,shift=true", "vit"), ("gaussian_2d:sigmas=1;3,weights=1;2", "vit"),
    ("polyline_path:alpha=0.8,beta=0.6", "vit"), ("block_topk:b=8,blocks=2", "vit"), ("head_ablation:heads=0.2", "vit"),
]


@pytest.mark.parametrize("spec,kind", MAPS_CASES)
def test_maps_pass_against_dense_probs(spec, kind):
    ctx = vit_ctx() if kind == "vit" else seq_ctx(kind == "causal")
    variant, n, r = parse_variant(spec), ctx.n, 7  # 7 ∤ N: uneven bins
    q, k, v = qkv(n)
    res = fwd(q, k, v, variant, ctx)
    tile = ((3, 20), (5, 33))
    maps = maps_pass(q, k, res.lse, variant, ctx, pooled=r, tile=tile, path_lse=getattr(res, "path_lse", None))
    p = reference(q, k, v, variant, ctx, want_probs=True).probs.double()
    torch.testing.assert_close(maps.pooled().double(), block_means(p, r), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(maps.tile.double(), p[:, :, 3:20, 5:33], atol=1e-6, rtol=1e-5)
    for name, want in dense_stats(p, ctx).items():
        torch.testing.assert_close(maps.stats[name].double(), want, atol=5e-5, rtol=1e-5, msg=name)


def test_maps_match_the_cpu_maps_sink():
    """Same numbers as kernels.maps.MapsSink (the PyTorch path) on a causal sequence with R > N/2."""
    ctx = seq_ctx(True, n=30)
    variant = parse_variant("sliding_window:w=7,sinks=1")
    q, k, v = qkv(30)
    sink = MapsSink(1, H, 30, 30, ctx, pooled=20, device=DEV)
    ref = attention(q, expand(k), expand(v), scale=SCALE, ctx=ctx, variant=variant, sinks=(sink,), chunk=7)
    maps = maps_pass(q, k, ref.lse, variant, ctx, pooled=20)
    torch.testing.assert_close(maps.pooled(), sink.pooled(), atol=1e-6, rtol=1e-4)
    assert torch.equal(maps.rows, sink.rows)
    for name in sink.stats:
        torch.testing.assert_close(maps.stats[name], sink.stats[name], atol=5e-5, rtol=1e-5, msg=name)


def test_exact_tile_signature_of_the_cpu_path():
    """triton_exact_tile takes (H, N, D) q, k and (H, N) lse like kernels.maps.exact_tile."""
    ctx = vit_ctx()
    variant = parse_variant("neighborhood_2d:k=2")
    q, k, v = qkv(ctx.n)
    lse = reference(q, k, v, variant, ctx).lse
    k_full = expand(k)
    want = exact_tile(q[0], k_full[0], lse[0], (4, 29), (0, 37), scale=SCALE, ctx=ctx, variant=variant)
    got = MAPS.triton_exact_tile(q[0], k[0], lse[0], (4, 29), (0, 37), scale=SCALE, ctx=ctx, variant=variant, **TILES)
    assert got.shape == (H, 25, 37)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_maps_empty_rows_are_zero():
    ctx = seq_ctx(True, n=24)
    variant = parse_variant("full")
    q, k, v = qkv(24, b=2)
    valid = torch.ones(2, 24, dtype=torch.bool, device=DEV)
    valid[0, :6] = False
    valid[1] = False
    mask = PaddingMask(valid)
    res = fwd(q, k, v, variant, ctx, model_mask=mask)
    maps = maps_pass(q, k, res.lse, variant, ctx, model_mask=mask, pooled=5, tile=((0, 24), (0, 24)))
    p = reference(q, k, v, variant, ctx, model_mask=mask, want_probs=True).probs.double()
    for name, want in dense_stats(p, ctx).items():
        got = maps.stats[name]
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.double(), want, atol=5e-5, rtol=1e-5, msg=name)
    assert (maps.stats["entropy"][1] == 0).all() and (maps.tile[1] == 0).all()
    torch.testing.assert_close(maps.pooled().double(), block_means(p, 5), atol=1e-6, rtol=1e-4)
