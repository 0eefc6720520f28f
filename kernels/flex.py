"""FlexAttention adapter: static masks and score modifiers through torch's FlexAttention.

The variants' mask_mod / score_mod already follow FlexAttention's (b, h, q_idx, kv_idx)
convention, so this module only composes them with causality, a model mask and the model's own
score modifiers (kernels/native.py), and calls torch.nn.attention.flex_attention:

  dense_mask(variant, ctx)                    -> bool (H or 1, N, N), built with create_mask
  flex_attention(q, k, v, variant, ctx, scale) -> AttnOut, the same meaning as kernels.reference
  flex_snippet(variant, ctx_kind)             -> str, code to paste into training code (kernels/snippet.py)

On CPU, torch 2.14 runs flex_attention eagerly (an unfused path that materialises the scores)
or compiled through inductor (a C++ compiler; ~20 s to compile, then fast). Here flex_attention
compiles on CUDA and runs eagerly on CPU unless told otherwise; a failed compilation falls back to
the eager path, which means the same.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.attention import flex_attention as _fa

from kernels.context import TokenContext
from kernels.core import AttnOut
from kernels.errors import VariantError
from kernels.native import PLAIN, NativeAttention
from kernels.snippet import flex_snippet
from kernels.variants.base import Variant

__all__ = ["combined_mask_mod", "dense_mask", "flex_attention", "flex_snippet"]

_EAGER_WARNING = "flex_attention called without torch.compile"
_compiled = None  # torch.compile(flex_attention), built on first use


def _require_flex_form(variant: Variant, ctx: TokenContext) -> None:
    """Refuse variants that change more than a mask and a score bias."""
    if any(getattr(variant, hook) is not None for hook in ("row_mask", "row_probs", "attend")) \
            or variant.head_weight(ctx, ctx.n_heads) is not None:
        raise VariantError(f"{variant.name} is not a static mask or score modifier; it has no FlexAttention form")


def combined_mask_mod(variant: Variant, ctx: TokenContext, n_kv: int | None = None, keep: torch.Tensor | None = None):
    """The variant's mask_mod AND causality (causal self-attention) AND `keep`; None when nothing is masked.

    keep: an optional bool (B, H, N, Nk) indexed as keep[b, h, q_idx, kv_idx], e.g. the model's padding
    mask (expand a broadcastable mask first; flex_attention does).
    """
    n_kv = ctx.n if n_kv is None else n_kv
    parts = []
    variant_mask = variant.mask_mod(ctx)
    if variant_mask is not None:
        parts.append(variant_mask)
    if ctx.causal and n_kv == ctx.n and not variant.widens_mask:  # prefix_lm's rule replaces causality
        parts.append(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
    if keep is not None:
        parts.append(lambda b, h, q_idx, kv_idx: keep[b, h, q_idx, kv_idx])
    if not parts:
        return None
    return _fa.and_masks(*parts)


def dense_mask(variant: Variant, ctx: TokenContext, n_heads: int | None = None) -> torch.Tensor:
    """bool (H or 1, N, N): True where query i keeps key j, from the variant's mask_mod and, for a
    causal model, the causal mask; built with FlexAttention's create_mask (so through vmap)."""
    variant.check(ctx)
    mask_mod = combined_mask_mod(variant, ctx) or _fa.noop_mask
    return _fa.create_mask(mask_mod, 1, n_heads or 1, ctx.n, ctx.n, device=ctx.row.device)[0]


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    variant: Variant,
    ctx: TokenContext,
    scale: float,
    *,
    keep: torch.Tensor | None = None,
    native: NativeAttention | None = None,
    compile: bool | None = None,
    block_size: int = 128,
    want_lse: bool = True,
) -> AttnOut:
    """Attention of q against k, v under a static mask / score modifier with torch's flex_attention.

    q (B, H, N, D); k, v (B, H, Nk, D) with as many heads as q. keep: optional bool mask
    broadcastable to (B, H, N, Nk) (the model's own mask). native: the model's own score modifiers,
    applied first (learned sinks by correcting the output with the log-sum-exp). compile: run
    torch.compile'd flex_attention (None: on CUDA only — the eager path materialises every score,
    and compiling on CPU takes ~20 s). Computes in float32; rows whose keys are all masked give
    zeros, lse −∞ and empty=True, as kernels.reference.attention does. want_lse=False asks for the
    output only (what compiled FlexAttention gives on a CPU).
    """
    variant.check(ctx)
    _require_flex_form(variant, ctx)
    ctx = ctx.to(q.device)
    native = PLAIN if native is None else native
    B, H, N, _ = q.shape
    Nk = k.shape[2]
    if keep is not None:
        keep = keep.to(torch.bool).expand(B, H, N, Nk)
        if variant.widens_mask:  # prefix_lm: its rows see what the prefix's last row sees, on purpose
            n = min(variant.prefix_length(ctx), N, Nk)
            keep = keep.clone()
            keep[:, :, :n, :n] |= keep[:, :, n - 1:n, :n]
    mask_mod = combined_mask_mod(variant, ctx, Nk, keep)
    block_mask = None
    if mask_mod is not None:
        block_mask = _fa.create_block_mask(mask_mod, B if keep is not None else None, H if keep is not None else None,
                                           N, Nk, device=q.device, BLOCK_SIZE=block_size)
    sinks = native.sink_logits
    with_lse = want_lse or sinks is not None
    call = dict(score_mod=_with_native(variant.score_mod(ctx), native, B, H, N, Nk), block_mask=block_mask,
                scale=scale)
    if with_lse:
        call["return_aux"] = _fa.AuxRequest(lse=True)
    qf, kf, vf = q.float(), k.float(), v.float()
    res = _run(qf, kf, vf, call, q.is_cuda if compile is None else compile)
    out, lse = (res[0], res[1].lse.float()) if with_lse else (res, None)
    out = out.float()
    empty = torch.isneginf(lse) if lse is not None else torch.zeros(B, H, N, dtype=torch.bool, device=q.device)
    if sinks is not None:  # the sink joins each row's normaliser: rescale by Σ exp(s) / (Σ exp(s) + exp(sink))
        total = torch.logaddexp(lse, sinks.float().to(q.device)[None, :, None])
        out = out * torch.exp(lse - total).nan_to_num(0.0)[..., None]
        lse = total
    out = out.masked_fill(empty[..., None], 0.0)
    return AttnOut(out=out, lse=lse if want_lse else None, empty=empty)


def _with_native(score_mod, native: NativeAttention, B: int, H: int, N: int, Nk: int):
    """The variant's score_mod after the model's own soft cap, key bias and pair bias (kernels/native.py)."""
    if native.softcap is None and native.key_bias is None and native.pair_bias is None:
        return score_mod
    cap = native.softcap
    key_bias = None if native.key_bias is None else native.key_bias.float().expand(B, H, Nk)
    pair_bias = None if native.pair_bias is None else native.pair_bias.float().expand(B, H, N, Nk)

    def mod(score, b, h, q_idx, kv_idx):
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        if key_bias is not None:
            score = score + key_bias[b, h, kv_idx]
        if pair_bias is not None:
            score = score + pair_bias[b, h, q_idx, kv_idx]
        return score if score_mod is None else score_mod(score, b, h, q_idx, kv_idx)

    return mod


def _run(q, k, v, call: dict, compile: bool):
    global _compiled
    if compile:
        try:
            if _compiled is None:
                _compiled = torch.compile(_fa.flex_attention)
            return _compiled(q, k, v, **call)
        except Exception as exc:  # no compiler, unsupported shape...: the eager path means the same
            warnings.warn(f"compiled flex_attention failed ({type(exc).__name__}: {exc}); running it eagerly",
                          RuntimeWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EAGER_WARNING)
        return _fa.flex_attention(q, k, v, **call)
