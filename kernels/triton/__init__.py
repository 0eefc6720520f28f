"""Triton kernels: FlashAttention-2-style forward under the variants, and the maps pass.

  kernel_spec(variant, ctx)                                  -> KernelSpec | None   (spec.py)
  triton_attention(q, k, v, *, scale, variant, ctx, model_mask=None) -> AttnOut   (attention_fwd.py)
  triton_maps(q, k, lse, *, scale, ctx, variant, model_mask=None, pooled=256, tile=None) -> TritonMaps
  triton_exact_tile(q, k, lse, rows, cols, *, scale, ctx, variant, model_mask=None) -> Tensor  (maps.py)
  BlockMask, build_block_mask, block_mask_from_mask_mod                             (block_mask.py)

On a GPU the kernels run compiled; on CPU only under TRITON_INTERPRET=1 (tests, tiny shapes),
which must be set before this package's kernel modules are first imported. Importing the
package itself is cheap: the kernel modules load on first use.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "kernel_spec": "spec",
    "KernelSpec": "spec",
    "SUPPORTED": "spec",
    "triton_attention": "attention_fwd",
    "interpreting": "attention_fwd",
    "triton_maps": "maps",
    "triton_exact_tile": "maps",
    "TritonMaps": "maps",
    "BlockMask": "block_mask",
    "build_block_mask": "block_mask",
    "block_mask_from_mask_mod": "block_mask",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def available() -> bool:
    """Whether the kernels can run here: a CUDA GPU, or the interpreter (TRITON_INTERPRET=1)."""
    import os

    try:
        import torch
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"


__all__ = [*_EXPORTS, "available"]
