"""Pick the attention path for one call.

Only what is asked is computed. Output only (no probabilities, LSE or sinks): `full` goes to fused
SDPA, a static mask or a model mask to SDPA over the keys each query chunk's block plan keeps. GPU: the Triton
kernels where the variant has a kernel form (output + LSE, then the maps pass for pooled maps and
row statistics). Everything else, and whatever a faster path cannot express exactly (the model's
own soft cap, biases or learned sinks), takes the block-sparse reference path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.blocks import model_mask_of
from kernels.context import TokenContext
from kernels.core import AttnOut, ChunkSink
from kernels.native import NativeAttention
from kernels.reference import Call, attention, sdpa_chunks
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
    native: NativeAttention | None = None,
    want_probs: bool = False,
    want_lse: bool = True,
    sinks: tuple[ChunkSink, ...] = (),
) -> AttnOut:
    """Attention of q against k, v under `variant`, the model's mask and the model's own attention
    (`native`, kernels/native.py; None is plain softmax attention). k and v carry as many heads as q."""
    plain = native is None or native.is_plain
    output_only = not want_probs and not want_lse and not sinks
    if output_only and plain and variant.is_full and model_mask_of(model_mask, ctx) is None:
        return _sdpa(q, k, v, scale, ctx)
    if output_only and plain and _masks_only(variant, ctx, q.shape[1]):
        return sdpa_chunks(Call(q, k, v, scale, ctx, variant, model_mask, want_lse=False))
    if q.is_cuda and not want_probs and plain:
        res = _triton(q, k, v, scale, ctx, variant, model_mask, sinks)
        if res is not None:
            return res
    return attention(
        q, k, v, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask, native=native,
        want_probs=want_probs, want_lse=want_lse, sinks=sinks,
    )


def _masks_only(variant: Variant, ctx: TokenContext, heads: int) -> bool:
    """A static mask and nothing else: SDPA can run it over the gathered keys."""
    return (variant.row_mask is None and variant.row_probs is None and variant.attend is None
            and variant.score_mod(ctx) is None and variant.head_weight(ctx, heads) is None)


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


def _sdpa(q, k, v, scale, ctx) -> AttnOut:
    """Plain attention, causal or not, in one fused SDPA call (no N×N mask is ever built)."""
    B, H, N, _ = q.shape
    causal = ctx.causal and N == k.shape[2]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return AttnOut(out=out.float(), lse=None, empty=torch.zeros(B, H, N, dtype=torch.bool, device=q.device))
