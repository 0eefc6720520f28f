"""Per-call injection of a variant and a recorder into a model's attention.

transformers models run our function through `AttentionInterface` (selected with
attn_implementation="attnscope"); timm ViTs get a per-instance forward (models/timm_adapter.py).
What to do travels in a `ContextVar` for one forward pass, so two threads sharing one
cached model with different variants never see each other's settings.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from kernels.context import TokenContext
from kernels.dispatch import attend
from kernels.native import PLAIN, NativeAttention
from kernels.variants import Variant, parse_variant
from kernels.variants.subset import restrict_heads
from models.loaded import ModelError
from models.memory import release_freed_memory

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


def current_plan() -> CallPlan | None:
    return _PLAN.get()


@contextmanager
def plan(p: CallPlan):
    token = _PLAN.set(p)
    try:
        yield p
    finally:
        _PLAN.reset(token)


class ModelMask:
    """The model's own mask (causal, padding, sliding window, chunked...), evaluated lazily per query chunk.

    transformers hands its mask interface a mask function instead of a dense N×N tensor, so long
    inputs never materialise the full mask. Everything it hands over is kept and passed back to its
    own `sdpa_mask`: in particular `local_size` (the sliding window or chunk), without which
    `sdpa_mask` would take a windowed bidirectional-skippable mask for "keep every key".
    """

    def __init__(self, batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask,
                 local_size=None, allow_is_bidirectional_skip=False, use_vmap=False, device="cpu"):
        self.batch_size, self.q_length, self.kv_length = batch_size, q_length, kv_length
        self.q_offset, self.kv_offset = q_offset, kv_offset
        self.mask_function, self.attention_mask = mask_function, attention_mask
        self.local_size, self.allow_is_bidirectional_skip = local_size, allow_is_bidirectional_skip
        self.use_vmap, self.device = use_vmap, device

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

        # The causal skip means "use is_causal", which a chunk of rows cannot; the bidirectional skip
        # is transformers' own decision, taken with the window it was given.
        return sdpa_mask(
            batch_size=self.batch_size, q_length=q1 - q0, kv_length=self.kv_length,
            q_offset=self.q_offset + q0, kv_offset=self.kv_offset,
            mask_function=self.mask_function, attention_mask=self.attention_mask, local_size=self.local_size,
            allow_is_causal_skip=False, allow_is_bidirectional_skip=self.allow_is_bidirectional_skip,
            use_vmap=self.use_vmap, device=self.device,
        )

    def mask_mod(self, b, h, q_idx, kv_idx):
        """FlexAttention's mask_mod over this call's rows and columns (q_idx < q_length, kv_idx < kv_length)."""
        from transformers.masking_utils import prepare_padding_mask

        keep = self.mask_function(b, h, q_idx + self.q_offset, kv_idx + self.kv_offset)
        padding = prepare_padding_mask(self.attention_mask, self.kv_length, self.kv_offset)
        if padding is not None:
            keep = keep & padding[b, kv_idx + self.kv_offset]
        return keep

    def __radd__(self, bias: torch.Tensor) -> torch.Tensor:
        """`bias + mask`, as BEiT adds its relative position bias to the mask: the eager additive mask plus the bias.

        N×N by nature; only the short inputs of models that add a bias this way get here.
        """
        keep = self.rows(0, self.q_length)
        if keep is None:
            return bias
        return bias + torch.where(keep.to(bias.device), 0.0, torch.finfo(bias.dtype).min).to(bias.dtype)

    __add__ = __radd__


def lazy_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
              local_size=None, allow_is_bidirectional_skip=False, use_vmap=False, device="cpu", **_) -> ModelMask:
    """transformers' mask interface for attnscope: everything it would build a mask from, kept for later."""
    from transformers.masking_utils import causal_mask_function

    return ModelMask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function or causal_mask_function,
                     attention_mask, local_size, allow_is_bidirectional_skip, use_vmap, device)


def layer_of(module, plan_: CallPlan | None) -> int:
    """The attention module's layer: numbered at load time (`_attnscope_layer`), else layer_idx."""
    idx = getattr(module, "_attnscope_layer", None)
    if idx is None:
        idx = getattr(module, "layer_idx", None)
    if idx is None:  # an unnumbered module: fall back to call order within this pass
        idx = plan_.calls if plan_ is not None else 0
    return int(idx)


def run_attention(module, query, key, value, model_mask, scale: float, native: NativeAttention = PLAIN):
    """Shared by every adapter. q (B, H, N, D); k, v (B, Hkv, Nk, D); `native`: what the model adds to its scores.

    `model_mask`: a ModelMaskLike, a 4D tensor (bool, True = keep; or float, additive as in eager) or None.
    Returns (output (B, H, N, D) in the query dtype, probs or None).
    """
    p = _PLAN.get()
    layer = layer_of(module, p)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: each key head serves n_rep query heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if isinstance(model_mask, torch.Tensor):
        model_mask, native = split_dense_mask(model_mask[..., : key.shape[2]], native, query.shape[1])
    extra = {} if native.is_plain else {"native": native}  # the engine takes `native` once it honours it
    if p is None:  # a plain call outside any trace: the model's own attention
        ctx = TokenContext.sequence(query.shape[2], causal=bool(getattr(module, "is_causal", False)))
        res = attend(query, key, value, scale=scale, ctx=ctx, variant=FULL, model_mask=model_mask, want_lse=False,
                     **extra)
        return res.out.to(query.dtype), None
    p.calls += 1
    ctx = p.ctx.with_layer(layer, query.shape[1])
    if query.shape[2] != ctx.n or key.shape[2] != ctx.n:  # windows as batches, dropped tokens...
        raise ModelError(f"attention layer {layer} ({type(module).__name__}) attends {query.shape[2]} queries to "
                         f"{key.shape[2]} keys, not the input's {ctx.n} tokens; attnscope cannot draw it on the input "
                         "(see the model family table in the README)")
    rec = p.recorder
    variant = p.variant_for(layer)
    res = attend(
        query, key, value, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
        want_probs=rec is not None and rec.wants_probs(ctx.n),
        want_lse=rec is not None,
        sinks=rec.sinks(layer, ctx, query, key) if rec is not None else (),
        **extra,
    )
    if rec is not None:
        rec.record(layer, res, query, key, scale)
        # a recorded pass frees large working tensors between the arrays it keeps: give them back to the
        # system after each layer, so the peak follows what the request holds (models.memory)
        release_freed_memory()
    return res.out.to(query.dtype), res.probs


def split_dense_mask(mask: torch.Tensor, native: NativeAttention, heads: int) -> tuple[DenseMask, NativeAttention]:
    """A prepared 4D mask: bool (True = keep), or float as eager adds it, where the finite part is a bias
    the model put into its mask (BEiT's relative position bias) and joins `native` as pair_bias."""
    if mask.dtype == torch.bool:
        return DenseMask(mask), native
    keep = mask > torch.finfo(mask.dtype).min / 2
    bias = torch.where(keep, mask, 0.0)
    if not bool(bias.any()):
        return DenseMask(keep), native
    if native.pair_bias is not None:
        bias = bias + native.pair_bias
    return DenseMask(keep), replace(native, pair_bias=bias.float().expand(-1, heads, -1, -1))


class DenseMask:
    """A model mask already held as a bool (B, 1 or H, N, Nk) tensor (timm, eager-style masks); True = keep."""

    def __init__(self, dense: torch.Tensor):
        self.dense = dense

    def rows(self, q0: int, q1: int) -> torch.Tensor:
        return self.dense[:, :, q0:q1]

    def redundant_for(self, ctx) -> bool:
        return False


# What transformers may hand an attention function that changes its math and that attnscope does not
# reproduce: refused in one line rather than traced wrong.
UNSUPPORTED_KWARGS = {
    "position_bias": "a relative position bias handed beside the mask",
    "sinks": "attention sinks in a form other than GPT-OSS's s_aux",
    "indices": "a sparse key selection (DeepSeek sparse attention)",
    "block_indices": "a sparse block selection",
}


def hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, s_aux=None,
                 **kwargs):
    """The function transformers calls in every attention layer (AttentionInterface contract)."""
    for name, what in UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ModelError(f"{type(module).__name__} hands its attention {what} ({name}=), which attnscope does "
                             "not reproduce; see the model family table in the README")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    native = NativeAttention(softcap=softcap, sink_logits=None if s_aux is None else s_aux.float())
    out, probs = run_attention(module, query, key, value, attention_mask, scale, native)
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
