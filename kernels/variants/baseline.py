"""`full`: the model's own attention, exact."""

from __future__ import annotations

from kernels.kernel_form import KernelSpec
from kernels.variants.base import Variant
from kernels.variants.registry import register


@register
class Full(Variant):
    """The model's own softmax attention, unchanged (Vaswani et al., 2017)."""

    name = "full"
    family = "baseline"
    applies_to = frozenset({"vit", "causal", "bidirectional"})

    def kernel_form(self, ctx):
        return KernelSpec()
