"""Pick the attention path for one call.

GPU: the Triton kernels where the variant has a kernel form (output + LSE, then the maps pass
for pooled maps and row statistics), else the reference. CPU: SDPA when only the output of
`full` is needed, else the chunked reference path (which skips keys a static mask hides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.context import TokenContext
from kernels.reference import AttnOut, ChunkSink, attention
from kernels.variants.base import Variant


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    ctx: TokenContext,
    variant: Variant,
    model_mask=None,
    want_probs: bool = False,
    want_lse: bool = True,
    sinks: tuple[ChunkSink, ...] = (),
) -> AttnOut:
    """Attention of q against k, v under `variant`. k and v carry as many heads as q."""
    if variant.is_full and not want_probs and not want_lse and not sinks:
        return _sdpa(q, k, v, scale, ctx, model_mask)
    if q.is_cuda and not want_probs:
        res = _triton(q, k, v, scale, ctx, variant, model_mask, sinks)
        if res is not None:
            return res
    return attention(
        q, k, v, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
        want_probs=want_probs, sinks=sinks,
    )


def _triton(q, k, v, scale, ctx, variant, model_mask, sinks) -> AttnOut | None:
    """The fused kernels, or None when the variant or the sinks have no kernel form (the reference runs)."""
    from kernels import triton as tk
    from kernels.maps import MapsSink
    from kernels.variants import VariantError

    if not tk.available() or any(not isinstance(s, MapsSink) for s in sinks):
        return None
    try:
        if tk.kernel_spec(variant, ctx) is None:
            return None
        res = tk.triton_attention(q, k, v, scale=scale, variant=variant, ctx=ctx, model_mask=model_mask)
        for sink in sinks:  # the maps pass fills what the reference's sinks would have
            maps = tk.triton_maps(q, k, res.lse, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
                                  pooled=None if sink.rows is None else sink.pooled_sum.shape[-1],
                                  path_lse=getattr(res, "path_lse", None))
            sink.absorb(maps)
    except VariantError:  # a model mask the kernels do not take: the reference handles it
        return None
    return res


def _sdpa(q, k, v, scale, ctx, model_mask) -> AttnOut:
    B, H, N, _ = q.shape
    self_attn = N == k.shape[2]
    if model_mask is not None and getattr(model_mask, "redundant_for", lambda c: False)(ctx):
        model_mask = None  # plain causal: is_causal keeps SDPA on its fused path, with no N×N mask
    mask = None if model_mask is None else model_mask.rows(0, N)
    causal = ctx.causal and self_attn and mask is None
    if mask is not None and ctx.causal and self_attn:
        mask = mask & torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    empty = torch.zeros(B, H, N, dtype=torch.bool, device=q.device)
    if mask is not None:  # SDPA gives NaN rows where every key is masked; we promise zeros
        empty = ~mask.any(-1).expand(B, H, N)
        out = out.masked_fill(empty[..., None], 0.0)
    return AttnOut(out=out.float(), lse=None, empty=empty)
