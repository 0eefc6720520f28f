"""`alibi`: ALiBi's linear distance penalty with per-head geometric slopes (catalogue entry 28)."""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.kernel_form import BIAS_DISTANCE, KernelSpec
from kernels.variants.registry import register
from kernels.variants.score_mods import ScoreMod
from kernels.variants.static_masks import BOTH


def alibi_slope(h, n_heads):
    """m_h = 2^(−8(h+1)/H): ALiBi's geometric slopes, head 0 the steepest."""
    return 2.0 ** (-8.0 * (h + 1) / n_heads)


def alibi(h, q_idx, kv_idx, n_heads):
    """−m_h·|i − j| (on a causal model j ≤ i, so −m_h·(i − j))."""
    return -alibi_slope(h, n_heads) * abs(q_idx - kv_idx)


@register
class Alibi(ScoreMod):
    """ALiBi: s − m_h·(i − j) with the standard slopes m_h = 2^(−8(h+1)/H); bidirectional −m_h·|i − j|.

    Press, Smith & Lewis, 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
    Length Extrapolation", arXiv:2108.12409; attention-gym's `generate_alibi_bias`. Positions are
    token indices; on a ViT, pairs with a special token get no bias. A model that already uses
    ALiBi (BLOOM, MPT) gets this on top of its own bias.
    """

    name = "alibi"
    applies_to = BOTH
    rule = staticmethod(alibi)
    helpers = (alibi_slope,)
    per_head = True

    def rule_kwargs(self, values, sizes):
        return {"n_heads": sizes.n_heads}

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        n_heads = ctx.n_heads
        return KernelSpec(bias=BIAS_DISTANCE,
                          head_coef=lambda heads: -alibi_slope(torch.arange(heads, dtype=torch.float64), n_heads))
