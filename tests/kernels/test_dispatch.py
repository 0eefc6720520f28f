"""Dispatch: the Triton route (run here under the interpreter) fills the same sinks as the reference."""

from __future__ import annotations

import pytest
import torch

from kernels import dispatch
from kernels.context import TokenContext
from kernels.maps import MapsSink
from kernels.reference import attention
from kernels.variants import parse_variant


@pytest.mark.parametrize("spec,causal", [("full", True), ("sliding_window:w=4,sinks=1", True), ("decay_1d", False)])
def test_triton_route_matches_reference(spec, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24, 32, generator=g) for _ in range(3))
    ctx = TokenContext.sequence(24, causal=causal, n_heads=2)
    variant = parse_variant(spec)
    ref_maps = MapsSink(1, 2, 24, 24, ctx, pooled=8, device="cpu")
    ref = attention(q, k, v, scale=0.2, ctx=ctx, variant=variant, sinks=(ref_maps,))
    tri_maps = MapsSink(1, 2, 24, 24, ctx, pooled=8, device="cpu")
    tri = dispatch._triton(q, k, v, 0.2, ctx, variant, None, (tri_maps,))
    assert tri is not None
    torch.testing.assert_close(tri.out, ref.out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(tri.lse, ref.lse, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(tri_maps.pooled(), ref_maps.pooled(), atol=2e-5, rtol=1e-4)
    for name, value in ref_maps.stats.items():
        torch.testing.assert_close(tri_maps.stats[name], value, atol=1e-4, rtol=1e-4)


def test_variants_without_a_kernel_fall_back():
    q, k, v = (torch.randn(1, 2, 8, 32) for _ in range(3))
    ctx = TokenContext.sequence(8, causal=False, n_heads=2)
    assert dispatch._triton(q, k, v, 0.2, ctx, parse_variant("entmax"), None, ()) is None
