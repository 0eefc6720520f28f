"""A variant's mask and bias as matrices, and how sparse it is at a kernel's block size."""

from __future__ import annotations

import numpy as np
import torch

from kernels.context import TokenContext
from kernels.reference import allowed_fn, index_grid
from kernels.variants import Variant

MAX_N = 4096  # the mask lab draws masks up to this size


def mask_matrix(variant: Variant, ctx: TokenContext) -> np.ndarray:
    """(H or 1, N, N) bool: which keys each query keeps under the variant (causality included).

    Content-dependent variants keep whatever their scores pick; this is their static part only.
    """
    if ctx.n > MAX_N:
        raise ValueError(f"masks are drawn up to {MAX_N} tokens (this input has {ctx.n})")
    keep = allowed_fn(variant, ctx, None, 1, ctx.n_heads, ctx.n, "cpu")(0, ctx.n)
    if keep is None:
        return np.ones((1, ctx.n, ctx.n), dtype=bool)
    return keep[0].numpy()


def bias_matrix(variant: Variant, ctx: TokenContext) -> np.ndarray | None:
    """(H, N, N) additive bias of a score modifier (score_mod applied to zero scores), or None."""
    score_mod = variant.score_mod(ctx)
    if score_mod is None:
        return None
    b, h, qi, kj = index_grid(1, ctx.n_heads, 0, ctx.n, ctx.n, "cpu")
    zeros = torch.zeros(1, ctx.n_heads, ctx.n, ctx.n)
    return score_mod(zeros, b, h, qi, kj)[0].numpy()


def kept(keep: np.ndarray, causal: bool) -> float:
    """Fraction of the pairs the model itself computes (its causal triangle for a decoder, else every pair)
    that the mask keeps: the one denominator the app and the quality lens use."""
    n = keep.shape[-1]
    possible = n * (n + 1) / 2 if causal else n * n
    return float(keep.sum((-1, -2)).mean() / possible)


def blocks_kept(keep: np.ndarray, block: int, causal: bool) -> float:
    """Fraction of the block×block tiles the model computes that hold a kept pair: the work a block-sparse
    kernel does (1 − this is what it skips)."""
    n = keep.shape[-1]
    nb = -(-n // block)
    pad = nb * block - n
    k = np.pad(keep, [(0, 0), (0, pad), (0, pad)])
    tiles = k.reshape(k.shape[0], nb, block, nb, block).any((2, 4))
    possible = nb * (nb + 1) / 2 if causal else nb * nb
    return float(tiles.sum((-1, -2)).mean() / possible)
