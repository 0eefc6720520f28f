"""Triton kernels compiled on a GPU, at real sizes, against the reference path (skipped without CUDA).

Same comparisons as test_triton_interpret.py with N = 1024–4096, D = 64/128, float16/bfloat16
inputs (tolerances for half-precision products: p is rounded to the input dtype before p·v) and
float32 (tf32x3 products, tight tolerances). Grouped-query attention: 8 query heads, 2 kv heads.
"""

from __future__ import annotations

import pytest
import torch

from kernels.context import TokenContext
from kernels.maps import MapsSink, exact_tile
from kernels.reference import attention
from kernels.selfcheck import TOL  # the runtime self-check holds the kernels to the same tolerances
from kernels.variants import parse_variant

pytestmark = pytest.mark.gpu

H, HKV = 8, 2


def kernels():
    from kernels.triton import attention_fwd, maps

    return attention_fwd, maps


def qkv(n, d, dtype, b=1, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, h, n, d, device="cuda", generator=g).to(dtype) for h in (H, HKV, HKV)]


def expand(x):
    return x.repeat_interleave(H // x.shape[1], dim=1)


def compare(res, ref, tol):
    assert not torch.isnan(res.out).any() and not torch.isnan(res.lse).any()
    assert torch.equal(res.empty, ref.empty)
    torch.testing.assert_close(res.out, ref.out, atol=tol, rtol=tol)
    live = ~ref.empty
    torch.testing.assert_close(res.lse[live], ref.lse[live], atol=tol, rtol=tol)


SEQ_CASES = [
    ("full", True, 4096, 128, torch.bfloat16),
    ("full", False, 1024, 64, torch.float16),
    ("full", False, 1000, 96, torch.float16),  # N not a multiple of any tile, padded head dim
    ("full", True, 1024, 64, torch.float32),
    ("sliding_window:w=256,sinks=4", True, 4096, 64, torch.bfloat16),
    ("sliding_window:w=200", False, 2048, 128, torch.float16),
    ("strided", True, 2048, 64, torch.float16),
    ("fixed", True, 2048, 64, torch.bfloat16),
    ("dilated_window", False, 2048, 64, torch.float16),
    ("star:q_tokens=64", True, 2048, 64, torch.bfloat16),
    ("decay_1d", True, 2048, 128, torch.bfloat16),
    ("block_topk", True, 2048, 64, torch.float16),
]


@pytest.mark.parametrize("spec,causal,n,d,dtype", SEQ_CASES)
def test_forward_sequence_gpu(spec, causal, n, d, dtype):
    fwd, _ = kernels()
    variant = parse_variant(spec)
    ctx = TokenContext.sequence(n, causal=causal).with_layer(0, H)
    q, k, v = qkv(n, d, dtype)
    scale = d**-0.5
    res = fwd.triton_attention(q, k, v, scale=scale, variant=variant, ctx=ctx)
    ref = attention(q, expand(k), expand(v), scale=scale, ctx=ctx, variant=variant)
    compare(res, ref, TOL[dtype])


VIT_CASES = [
    "full", "window_2d:M=7,shift=true", "neighborhood_2d:k=5", "manhattan_decay", "gaussian_2d",
    "gaussian_2d:sigmas=1;4,weights=2;1", "polyline_path", "polyline_path:edge_aware=true", "routing_2d",
]


@pytest.mark.parametrize("spec", VIT_CASES)
def test_forward_vit_gpu(spec):
    fwd, _ = kernels()
    variant = parse_variant(spec)
    ctx = TokenContext.vit((32, 32), n_prefix=1).with_layer(0, H).to("cuda")  # 1025 tokens
    q, k, v = qkv(ctx.n, 64, torch.float16)
    res = fwd.triton_attention(q, k, v, scale=0.125, variant=variant, ctx=ctx)
    ref = attention(q, expand(k), expand(v), scale=0.125, ctx=ctx, variant=variant)
    compare(res, ref, TOL[torch.float16])


class PaddingMask:
    def __init__(self, valid):
        self.valid = valid

    def rows(self, q0, q1):
        return self.valid[:, None, None, :].expand(-1, 1, q1 - q0, -1)


def test_key_padding_gpu():
    fwd, _ = kernels()
    n = 2048
    variant = parse_variant("sliding_window:w=128,sinks=4")
    ctx = TokenContext.sequence(n, causal=True).with_layer(0, H)
    q, k, v = qkv(n, 64, torch.bfloat16, b=2)
    valid = torch.ones(2, n, dtype=torch.bool, device="cuda")
    valid[0, :300] = False
    mask = PaddingMask(valid)
    res = fwd.triton_attention(q, k, v, scale=0.125, variant=variant, ctx=ctx, model_mask=mask)
    ref = attention(q, expand(k), expand(v), scale=0.125, ctx=ctx, variant=variant, model_mask=mask)
    compare(res, ref, TOL[torch.bfloat16])
    assert res.empty[0, :, :300].all() and (res.out[0, :, :300] == 0).all()


@pytest.mark.parametrize("spec,kind,n", [("full", "causal", 4096), ("sliding_window:w=300", "causal", 2048),
                                         ("decay_1d", "bidirectional", 2048), ("polyline_path", "vit", 1025),
                                         ("window_2d", "vit", 1025)])
def test_maps_pass_gpu(spec, kind, n):
    """Pooled maps (R = 256), row statistics and a tile against the reference path's MapsSink."""
    fwd, maps = kernels()
    variant = parse_variant(spec)
    ctx = TokenContext.vit((32, 32), n_prefix=1) if kind == "vit" else TokenContext.sequence(n, causal=kind == "causal")
    ctx = ctx.with_layer(0, H).to("cuda")
    q, k, v = qkv(ctx.n, 64, torch.bfloat16)
    res = fwd.triton_attention(q, k, v, scale=0.125, variant=variant, ctx=ctx)
    sink = MapsSink(1, H, ctx.n, ctx.n, ctx, pooled=256, device="cuda")
    ref = attention(q, expand(k), expand(v), scale=0.125, ctx=ctx, variant=variant, sinks=(sink,))
    tile = ((100, 300), (0, 513))
    got = maps.triton_maps(q, k, res.lse, scale=0.125, ctx=ctx, variant=variant, pooled=256, tile=tile,
                           path_lse=getattr(res, "path_lse", None))
    torch.testing.assert_close(got.pooled(), sink.pooled(), atol=1e-6, rtol=2e-2)
    for name in sink.stats:
        torch.testing.assert_close(got.stats[name], sink.stats[name], atol=2e-3, rtol=2e-2, msg=name)
    if kind != "vit" or spec != "polyline_path":  # exact_tile (reference) has no polyline form
        want = exact_tile(q[0], expand(k)[0], ref.lse[0], *tile, scale=0.125, ctx=ctx, variant=variant)
        torch.testing.assert_close(got.tile[0], want, atol=1e-4, rtol=2e-2)


def test_exact_tile_gpu_float32():
    _, maps = kernels()
    n = 2048
    variant = parse_variant("dilated_window:w=64,d=3")
    ctx = TokenContext.sequence(n, causal=True).with_layer(0, H)
    q, k, v = qkv(n, 128, torch.float32)
    ref = attention(q, expand(k), expand(v), scale=0.1, ctx=ctx, variant=variant)
    want = exact_tile(q[0], expand(k)[0], ref.lse[0], (1500, 1800), (1200, 1700), scale=0.1, ctx=ctx, variant=variant)
    got = maps.triton_exact_tile(q[0], k[0], ref.lse[0], (1500, 1800), (1200, 1700), scale=0.1, ctx=ctx,
                                 variant=variant)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
