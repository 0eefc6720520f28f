"""A variant restricted to some heads: the other heads keep the model's own attention."""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.core import AttnOut, softmax_lse
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
        if inner.widens_mask:  # the widening is of the model's own mask, which every head shares
            raise VariantError(f"{inner.name} widens the model's mask for every head; it cannot be restricted to "
                               "some heads (leave heads unset)")
        self.inner, self.heads = inner, tuple(sorted(set(heads)))
        self.name = inner.name
        self.applies_to = inner.applies_to
        self.needs_calibration = getattr(inner, "needs_calibration", False)
        self.mask_depends_on_layer = getattr(inner, "mask_depends_on_layer", False)
        self.honours_native = inner.honours_native
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

    def head_weight(self, ctx, heads):
        inner = self.inner.head_weight(ctx, heads)
        if inner is None:
            return None
        return torch.where(self._selected(ctx, inner.device), inner, torch.ones_like(inner))

    def _row_mask(self, s, q_idx, kv_idx, ctx):
        keep = self.inner.row_mask(s, q_idx, kv_idx, ctx)
        return keep | ~self._selected(ctx, s.device)[None, :, None, None]

    def _row_probs(self, s, q_idx, kv_idx, ctx):
        p = self.inner.row_probs(s, q_idx, kv_idx, ctx)
        # the other heads keep the softmax; a learned sink is the last column of s here and of p there
        return torch.where(self._selected(ctx, s.device)[None, :, None, None], p, softmax_lse(s)[0])

    def _attend(self, call):
        on = self._selected(call.ctx, call.q.device)[None, :, None, None].float()  # (1, H, 1, 1)

        def only(weight):
            return tuple((lambda chunk, f=f: f(chunk.weighted(weight))) for f in call.sinks)

        mine = self.inner.attend(call.with_(variant=self.inner, sinks=only(on)))
        base = call.run(Full(), sinks=only(1.0 - on))
        sel = on[..., 0].bool()  # (1, H, 1)

        def pick(a, b):  # per head: this variant's result on the selected heads, full elsewhere
            return None if a is None or b is None else torch.where(sel[..., None] if a.dim() == 4 else sel, a, b)

        return AttnOut(out=pick(mine.out, base.out), lse=pick(mine.lse, base.lse),
                       empty=pick(mine.empty, base.empty), probs=pick(mine.probs, base.probs))


def restrict_heads(variant: Variant, heads) -> Variant:
    """`variant` on `heads` only (None: every head)."""
    return variant if heads is None else HeadSubset(variant, tuple(heads))
