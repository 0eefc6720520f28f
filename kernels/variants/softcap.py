"""`softcap`: tanh soft-capping of the scores (catalogue entry 29)."""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.kernel_form import SCORE_SOFTCAP, KernelSpec
from kernels.variants.base import FlexSource, Param, Variant
from kernels.variants.registry import register
from kernels.variants.static_masks import BOTH


def softcap(score, cap):
    """cap·tanh(score / cap): scores squashed smoothly into (−cap, cap)."""
    return cap * torch.tanh(score / cap)


@register
class Softcap(Variant):
    """Soft-capping: s ← c·tanh(s / c), applied to every score (special tokens' included).

    As Gemma 2 (Gemma Team, 2024, arXiv:2408.00118) and Grok-1 cap their attention logits;
    attention-gym's `generate_tanh_softcap`. Small c flattens attention; large c changes nothing.
    A model that caps its own scores gets this on top of its own cap.
    """

    name = "softcap"
    family = "score_mod"
    applies_to = BOTH
    params = (Param("c", float, 50.0, "the cap: scores stay within (−c, c)", low=0, low_open=True),)

    def score_mod(self, ctx: TokenContext):
        cap = self.c
        return lambda score, b, h, q_idx, kv_idx: softcap(score, cap)

    def flex_source(self, ctx_kind: str) -> FlexSource:
        return FlexSource(functions=(softcap,), score=f"softcap(score, {self.c!r})")

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        return KernelSpec(score=SCORE_SOFTCAP, cap=self.c)
