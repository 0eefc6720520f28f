"""A variant on a subset of heads: chosen heads as the variant alone, the others as `full`."""

from __future__ import annotations

import pytest
import torch

from kernels.context import TokenContext
from kernels.maps import MapsSink
from kernels.reference import attention
from kernels.variants import VariantError, parse_variant
from kernels.variants.subset import restrict_heads

SPECS = ["sliding_window:w=2,sinks=1", "decay_1d", "topk:k=3", "relaxed:gamma=0.3", "focused_linear",
         "block_topk:b=4,blocks=1"]


def run(variant, ctx, q, k, v):
    sink = MapsSink(1, q.shape[1], q.shape[2], k.shape[2], ctx, pooled=4, device="cpu")
    res = attention(q, k, v, scale=0.35, ctx=ctx, variant=variant, want_probs=True, sinks=(sink,), chunk=5)
    return res, sink


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("causal", [False, True])
def test_subset_heads(spec, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 13, 8, generator=g) for _ in range(3))
    ctx = TokenContext.sequence(13, causal=causal, n_heads=4)
    inner = parse_variant(spec)
    alone, alone_maps = run(inner, ctx, q, k, v)
    full, full_maps = run(parse_variant("full"), ctx, q, k, v)
    mixed, mixed_maps = run(restrict_heads(inner, [1, 3]), ctx, q, k, v)
    for h in range(4):
        ref, ref_maps = (alone, alone_maps) if h in (1, 3) else (full, full_maps)
        torch.testing.assert_close(mixed.out[:, h], ref.out[:, h], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mixed.probs[:, h], ref.probs[:, h], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mixed_maps.pooled()[:, h], ref_maps.pooled()[:, h], atol=1e-6, rtol=1e-5)
        for name in ("entropy", "distance", "maxp"):
            torch.testing.assert_close(mixed_maps.stats[name][:, h], ref_maps.stats[name][:, h], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone.probs[:, 1], full.probs[:, 1])  # the variant does change those heads


def test_bad_heads():
    ctx = TokenContext.sequence(5, causal=False, n_heads=2)
    sub = restrict_heads(parse_variant("sliding_window:w=1"), [5])
    with pytest.raises(VariantError, match="heads \\[5\\] do not exist"):
        sub.mask_mod(ctx)
    with pytest.raises(VariantError, match="empty"):
        restrict_heads(parse_variant("full"), [])


def test_trace_with_layers_and_heads(tokenizer):
    import numpy as np
    from tiny import TEXT, tiny_text_model, wrap_text

    from models.tracer import trace

    lm = wrap_text(tiny_text_model("llama-gqa"), tokenizer)
    full = trace(lm, text=TEXT)
    sw = trace(lm, text=TEXT, variant="sliding_window:w=2,sinks=0")
    part = trace(lm, text=TEXT, variant="sliding_window:w=2,sinks=0", layers=[0], heads=[2])
    assert part.variant_layers == [0] and part.variant_heads == [2]
    np.testing.assert_allclose(part.attention(0)[2], sw.attention(0)[2], atol=1e-6)
    np.testing.assert_allclose(part.attention(0)[[0, 1, 3]], full.attention(0)[[0, 1, 3]], atol=1e-6)
    assert np.triu(part.attention(0)[2], 0)[np.tril_indices(part.n, -3)].max() == 0  # outside the window
