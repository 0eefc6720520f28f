"""`prefix_lm`: a bidirectional prefix on a causal model (catalogue entry 26).

The one variant that widens the model's own mask, on purpose: `widens_mask` says so for the
screen, and the attention path lets the prefix rows see what the prefix's last row sees (so a
padding key stays hidden); every other variant is ANDed with the model's mask.
"""

from __future__ import annotations

from kernels.context import TokenContext
from kernels.variants.base import FlexSource, Param
from kernels.variants.registry import register
from kernels.variants.static_masks import CAUSAL, StaticMask


def prefix_lm(q_idx, kv_idx, n):
    """j < n (the prefix, seen both ways) or j ≤ i (causal after it)."""
    return (kv_idx < n) | (kv_idx <= q_idx)


@register
class PrefixLM(StaticMask):
    """Prefix LM: keep j when j < n or j ≤ i — the first n tokens attend to each other both ways.

    UniLM's sequence-to-sequence mask (Dong et al., 2019, arXiv:1905.03197) and T5's prefix LM
    (Raffel et al., 2020, arXiv:1910.10683); attention-gym's `prefix_lm_causal_mask`. On a causal
    model this widens the causal mask on purpose: the model was not trained to see those keys.
    """

    name = "prefix_lm"
    applies_to = CAUSAL
    rule = staticmethod(prefix_lm)
    params = (Param("n", int, 16, "prefix length: these tokens see each other both ways", low=0),)
    widens_mask = "the first n tokens see each other both ways: this widens the model's causal mask on purpose"

    def prefix_length(self, ctx: TokenContext) -> int:
        return min(self.n, ctx.n)

    def flex_source(self, ctx_kind: str) -> FlexSource:
        return FlexSource(functions=(prefix_lm,), mask=self.rule_source(ctx_kind), widens=True)
