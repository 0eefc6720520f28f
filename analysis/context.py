"""Rebuild what the kernels need from a saved Trace: the token context and the variant as run."""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.variants import Variant, parse_variant
from kernels.variants.subset import restrict_heads


def context_of(trace, layer: int = 0) -> TokenContext:
    """The TokenContext the trace's tokens had (grid positions, special tokens, causality)."""
    special = torch.tensor(trace.special, dtype=torch.bool)
    if trace.kind == "vit":
        n_prefix = trace.n - trace.grid[0] * trace.grid[1]
        ctx = TokenContext.vit(tuple(trace.grid), n_prefix=n_prefix, n_layers=trace.n_layers)
    else:
        ctx = TokenContext.sequence(trace.n, causal=trace.kind == "causal", special=special,
                                    n_layers=trace.n_layers)
    return ctx.with_layer(layer, trace.n_heads)


def variant_of(trace, layer: int) -> Variant:
    """The variant as it ran in `layer`: `full` outside the chosen layers, restricted to the chosen heads."""
    if trace.variant_layers is not None and layer not in trace.variant_layers:
        return parse_variant("full")
    return restrict_heads(parse_variant(trace.variant), trace.variant_heads)
