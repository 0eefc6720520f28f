"""A variant restricted to some heads: the other heads keep the model's own attention."""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.reference import AllowedRows, AttnOut, attention
from kernels.variants.base import Variant, VariantError
from kernels.variants.baseline import Full


class HeadSubset(Variant):
    """Runs `inner` on the heads in `heads` and `full` on the rest, in one pass where the hooks allow.

    Mask and score hooks select per head through the h index; `attend` variants run twice,
    each pass feeding the sinks only its own heads' probabilities.
    """

    family = "subset"
    applies_to = frozenset({"vit", "causal", "bidirectional"})

    def __init__(self, inner: Variant, heads: tuple[int, ...]):
        super().__init__()
        if not heads:
            raise VariantError("the head subset is empty; give at least one head or leave it unset for all")
        self.inner, self.heads = inner, tuple(sorted(set(heads)))
        self.name = inner.name
        self.applies_to = inner.applies_to
        self.needs_calibration = getattr(inner, "needs_calibration", False)
        self.mask_depends_on_layer = getattr(inner, "mask_depends_on_layer", False)
        self.row_mask = self._row_mask if inner.row_mask is not None else None
        self.row_probs = self._row_probs if inner.row_probs is not None else None
        self.attend = self._attend if inner.attend is not None else None

    def spec(self) -> str:
        return self.inner.spec()

    def check(self, ctx: TokenContext) -> None:
        self.inner.check(ctx)

    def calibrate(self, *args):
        return self.inner.calibrate(*args)

    def _selected(self, ctx: TokenContext, device) -> torch.Tensor:
        bad = [h for h in self.heads if not 0 <= h < ctx.n_heads]
        if bad:
            raise VariantError(f"heads {bad} do not exist; this model has heads 0..{ctx.n_heads - 1}")
        sel = torch.zeros(ctx.n_heads, dtype=torch.bool, device=device)
        sel[list(self.heads)] = True
        return sel

    def mask_mod(self, ctx):
        inner = self.inner.mask_mod(ctx)
        if inner is None:
            return None
        sel = self._selected(ctx, ctx.special.device)
        return lambda b, h, q_idx, kv_idx: inner(b, h, q_idx, kv_idx) | ~sel[h]

    def score_mod(self, ctx):
        inner = self.inner.score_mod(ctx)
        if inner is None:
            return None
        sel = self._selected(ctx, ctx.special.device)
        return lambda s, b, h, q_idx, kv_idx: torch.where(sel[h], inner(s, b, h, q_idx, kv_idx), s)

    def _row_mask(self, s, allowed, q_idx, ctx):
        keep = self.inner.row_mask(s, allowed, q_idx, ctx)
        before = torch.ones_like(s, dtype=torch.bool) if allowed is None else allowed.expand_as(s)
        return torch.where(self._selected(ctx, s.device)[None, :, None, None], keep, before)

    def _row_probs(self, s, allowed, q_idx, ctx):
        p = self.inner.row_probs(s, allowed, q_idx, ctx)
        return torch.where(self._selected(ctx, s.device)[None, :, None, None], p, torch.softmax(s, -1))

    def _attend(self, q, k, v, *, scale, ctx, allowed, want_probs, sinks, chunk):
        sel = self._selected(ctx, q.device)[None, :, None]  # (1, H, 1)
        on = sel[..., None].float()

        def only(weight):
            return tuple((lambda q0, q1, p, s, f=f: f(q0, q1, p * weight, s)) for f in sinks)

        mine = self.inner.attend(q, k, v, scale=scale, ctx=ctx, allowed=allowed, want_probs=want_probs,
                                 sinks=only(on), chunk=chunk)
        base = attention(q, k, v, scale=scale, ctx=ctx, variant=Full(), model_mask=AllowedRows(allowed),
                         want_probs=want_probs, sinks=only(1.0 - on), chunk=chunk)

        def pick(a, b):  # per head: this variant's result on the selected heads, full elsewhere
            return None if a is None or b is None else torch.where(sel[..., None] if a.dim() == 4 else sel, a, b)

        return AttnOut(out=pick(mine.out, base.out), lse=pick(mine.lse, base.lse),
                       empty=pick(mine.empty, base.empty), probs=pick(mine.probs, base.probs))


def restrict_heads(variant: Variant, heads) -> Variant:
    """`variant` on `heads` only (None: every head)."""
    return variant if heads is None else HeadSubset(variant, tuple(heads))
