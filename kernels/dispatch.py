"""Pick the attention path for one call.

Only what is asked is computed. Output only (no probabilities, LSE or sinks): `full` goes to fused
SDPA, a static mask or a model mask to SDPA over the keys each query chunk's block plan keeps. GPU: per
variant family the path the measured table picks (kernels/gpu_table.py): the Triton kernels where the
variant has a kernel form (output + LSE, then the maps pass for pooled maps and row statistics), each
family checked once per process against the reference (kernels/selfcheck.py), or compiled FlexAttention
(output + LSE; the maps still from the Triton maps pass). Everything else, a family that failed its
self-check, and whatever a faster path cannot express exactly (the model's own soft cap, biases or
learned sinks), takes the block-sparse reference path.
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
    if _on_gpu(q) and not want_probs and plain:
        res = _gpu(q, k, v, scale, ctx, variant, model_mask, sinks)
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


def _on_gpu(q: torch.Tensor) -> bool:
    """Whether the GPU paths apply (a function, so tests can send CPU tensors down them)."""
    return q.is_cuda


def _gpu(q, k, v, scale, ctx, variant, model_mask, sinks) -> AttnOut | None:
    """The GPU path the table picks for the variant's family, or None: the reference runs (no kernel form,
    sinks the maps pass cannot fill, or a family that failed its self-check on this device)."""
    from kernels import gpu_table, selfcheck
    from kernels import triton as tk
    from kernels.maps import MapsSink

    if not tk.available() or any(not isinstance(s, MapsSink) for s in sinks) or tk.kernel_spec(variant, ctx) is None:
        return None
    if not selfcheck.verified(variant, ctx, q.dtype, q.shape[-1], q.device, _triton):
        return None
    card = torch.cuda.get_device_name(q.device) if q.is_cuda else "cpu"
    if gpu_table.backend(variant.family, card) == "flex" and _has_flex_form(variant, ctx, model_mask):
        from kernels.flex import flex_attention

        res = flex_attention(q, k, v, variant, ctx, scale)  # compiled on CUDA
        return _fill_maps(res, q, k, scale, ctx, variant, model_mask, sinks)
    return _triton(q, k, v, scale, ctx, variant, model_mask, sinks)


def _has_flex_form(variant: Variant, ctx: TokenContext, model_mask) -> bool:
    """`full`, a static mask or a pure score modifier (what describes itself as FlexAttention source), on a call
    without a model mask (FlexAttention would need it as a dense tensor)."""
    return (variant.is_full or type(variant).flex_source is not Variant.flex_source) \
        and model_mask_of(model_mask, ctx) is None


def _triton(q, k, v, scale, ctx, variant, model_mask, sinks) -> AttnOut | None:
    """The fused kernels, or None when the variant has no kernel form for this call (the reference runs)."""
    from kernels import triton as tk
    from kernels.variants import VariantError

    try:
        if tk.kernel_spec(variant, ctx) is None:
            return None
        res = tk.triton_attention(q, k, v, scale=scale, variant=variant, ctx=ctx, model_mask=model_mask)
        return _fill_maps(res, q, k, scale, ctx, variant, model_mask, sinks)
    except VariantError:  # a model mask the kernels do not take: the reference handles it
        return None


def _fill_maps(res, q, k, scale, ctx, variant, model_mask, sinks) -> AttnOut:
    """The Triton maps pass fills what the reference's sinks would have, from the forward's LSE."""
    from kernels import triton as tk

    for sink in sinks:
        maps = tk.triton_maps(q, k, res.lse, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
                              pooled=None if sink.rows is None else sink.pooled_sum.shape[-1],
                              path_lse=getattr(res, "path_lse", None))
        sink.absorb(maps)
    return res


def _sdpa(q, k, v, scale, ctx) -> AttnOut:
    """Plain attention, causal or not, in one fused SDPA call (no N×N mask is ever built)."""
    B, H, N, _ = q.shape
    causal = ctx.causal and N == k.shape[2]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return AttnOut(out=out.float(), lse=None, empty=torch.zeros(B, H, N, dtype=torch.bool, device=q.device))
