"""Pick the attention path for one call: SDPA when only the output is needed, else the reference."""

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
    return attention(
        q, k, v, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
        want_probs=want_probs, sinks=sinks,
    )


def _sdpa(q, k, v, scale, ctx, model_mask) -> AttnOut:
    B, H, N, _ = q.shape
    self_attn = N == k.shape[2]
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
