"""Variant → kernel switches: the variant's own kernel form (`Variant.kernel_form`, declared in its
file; kernels/kernel_form.py says what the switches mean), checked against this context.

`kernel_spec(variant, ctx)` returns a KernelSpec, or None when the Triton kernels do not run that
variant or context; callers then use the reference path.
"""

from __future__ import annotations

from kernels.context import TokenContext
from kernels.kernel_form import ContentFn, ContentTables, KernelSpec  # noqa: F401  (the kernels' vocabulary)
from kernels.variants import REGISTRY, Variant, VariantError

LOG2E = 1.4426950408889634


def kernel_spec(variant: Variant, ctx: TokenContext) -> KernelSpec | None:
    """The kernel switches for `variant` on `ctx`, or None when the Triton kernels do not cover it."""
    try:
        variant.check(ctx)
        spec = variant.kernel_form(ctx)
    except VariantError:  # e.g. a calibrated variant without its calibration: the reference says why
        return None
    if spec is None or (spec.uses_grid and ctx.grid is None):
        return None
    spec.causal = ctx.causal
    spec.name = variant.spec()
    return spec


SUPPORTED = tuple(name for name, cls in REGISTRY.items()
                  if cls.kernel_form is not Variant.kernel_form and not cls.widens_mask)
