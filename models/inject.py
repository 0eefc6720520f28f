"""Per-call injection of a variant and a recorder into a model's attention.

transformers models run our function through `AttentionInterface` (selected with
attn_implementation="attnscope"); timm ViTs get a per-instance forward (models/timm_adapter.py).
What to do travels in a `ContextVar` for one forward pass, so two threads sharing one
cached model with different variants never see each other's settings.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from kernels.context import TokenContext
from kernels.dispatch import attend
from kernels.variants import Variant, parse_variant
from kernels.variants.subset import restrict_heads

IMPL = "attnscope"


@dataclass
class CallPlan:
    """What one forward pass does: the variant, where it applies, what gets recorded."""

    variant: Variant
    ctx: TokenContext
    recorder: object | None = None  # models.recorder.Recorder
    layers: frozenset[int] | None = None  # None: every layer
    heads: tuple[int, ...] | None = None  # None: every head
    calls: int = field(default=0)

    def __post_init__(self):
        self._restricted = restrict_heads(self.variant, self.heads)

    def variant_for(self, layer: int) -> Variant:
        if self.layers is None or layer in self.layers:
            return self._restricted
        return FULL


FULL = parse_variant("full")
_PLAN: contextvars.ContextVar[CallPlan | None] = contextvars.ContextVar("attnscope_plan", default=None)


@contextmanager
def plan(p: CallPlan):
    token = _PLAN.set(p)
    try:
        yield p
    finally:
        _PLAN.reset(token)


class ModelMask:
    """The model's own mask (causal, padding, sliding...), evaluated lazily per query chunk.

    transformers hands us its mask function instead of a dense N×N tensor, so long inputs
    never materialise the full mask.
    """

    def __init__(self, batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask):
        self.batch_size, self.q_length, self.kv_length = batch_size, q_length, kv_length
        self.q_offset, self.kv_offset = q_offset, kv_offset
        self.mask_function, self.attention_mask = mask_function, attention_mask

    def redundant_for(self, ctx) -> bool:
        """True when this mask adds nothing to what the context already says (plain causal or no mask)."""
        from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

        plain = self.q_offset == 0 and self.kv_offset == 0 and self.q_length == self.kv_length
        no_padding = self.attention_mask is None or bool(self.attention_mask.all())
        if not (plain and no_padding):
            return False
        return self.mask_function is bidirectional_mask_function or (
            self.mask_function is causal_mask_function and ctx.causal
        )

    def rows(self, q0: int, q1: int) -> torch.Tensor | None:
        """bool (B, 1, q1-q0, Nk): True where query i may see key j; None when all are kept."""
        from transformers.masking_utils import sdpa_mask

        return sdpa_mask(
            batch_size=self.batch_size, q_length=q1 - q0, kv_length=self.kv_length,
            q_offset=self.q_offset + q0, kv_offset=self.kv_offset,
            mask_function=self.mask_function, attention_mask=self.attention_mask,
            allow_is_causal_skip=False, allow_is_bidirectional_skip=True,
            device=self.attention_mask.device if self.attention_mask is not None else "cpu",
        )


def lazy_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
              attention_mask=None, **_) -> ModelMask:
    from transformers.masking_utils import causal_mask_function

    return ModelMask(batch_size, q_length, kv_length, q_offset, kv_offset,
                     mask_function or causal_mask_function, attention_mask)


def layer_of(module, plan_: CallPlan | None) -> int:
    """The attention module's layer: numbered at load time (`_attnscope_layer`), else layer_idx."""
    idx = getattr(module, "_attnscope_layer", None)
    if idx is None:
        idx = getattr(module, "layer_idx", None)
    if idx is None:  # an unnumbered module: fall back to call order within this pass
        idx = plan_.calls if plan_ is not None else 0
    return int(idx)


def run_attention(module, query, key, value, model_mask, scale: float):
    """Shared by the transformers and timm adapters. q (B, H, N, D); k, v (B, Hkv, N, D).

    Returns (output (B, H, N, D) in the query dtype, probs or None).
    """
    p = _PLAN.get()
    layer = layer_of(module, p)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: each key head serves n_rep query heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if isinstance(model_mask, torch.Tensor):  # a prepared 4D mask: additive float or bool
        dense = model_mask if model_mask.dtype == torch.bool else model_mask > torch.finfo(model_mask.dtype).min / 2
        model_mask = _DenseMask(dense[:, :, :, : key.shape[2]])
    if p is None:  # a plain call outside any trace: the model's own attention
        ctx = TokenContext.sequence(query.shape[2], causal=bool(getattr(module, "is_causal", False)))
        res = attend(query, key, value, scale=scale, ctx=ctx, variant=FULL, model_mask=model_mask, want_lse=False)
        return res.out.to(query.dtype), None
    p.calls += 1
    ctx = p.ctx.with_layer(layer, query.shape[1])
    rec = p.recorder
    variant = p.variant_for(layer)
    res = attend(
        query, key, value, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
        want_probs=rec is not None and rec.wants_probs(ctx.n),
        want_lse=rec is not None,
        sinks=rec.sinks(layer, ctx, query, key) if rec is not None else (),
    )
    if rec is not None:
        rec.record(layer, res, query, key, scale)
    return res.out.to(query.dtype), res.probs


class _DenseMask:
    def __init__(self, dense: torch.Tensor):
        self.dense = dense

    def rows(self, q0: int, q1: int) -> torch.Tensor:
        return self.dense[:, :, q0:q1]


def hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function transformers calls in every attention layer (AttentionInterface contract)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, probs = run_attention(module, query, key, value, attention_mask, scale)
    return out.transpose(1, 2).contiguous(), probs


_registered = False


def register() -> None:
    """Register the attention and mask functions with transformers, once per process."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPL, hf_attention)
    # Without a mask function transformers hands custom implementations attention_mask=None
    # and a causal model silently loses its causal mask (transformers #30652).
    AttentionMaskInterface.register(IMPL, lazy_mask)
    _registered = True
