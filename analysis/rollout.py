"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Attention alone ignores the residual stream: what a token carries at layer l+1 is its own
state plus what attention mixed in. Rollout models that by adding the identity to each
layer's (head-reduced) attention and multiplying the layers together:

    Â_l = (1 − residual) · reduce_h(A_l) + residual · I        (residual = 0.5: the paper's 0.5·A + 0.5·I)
    Â_l ← Â_l / rowsum(Â_l)                                    (rows renormalised: each stays a distribution)
    R   = Â_{L−1} · … · Â_1 · Â_0

Row i of R says how much of the top-layer token i flows from each input token j; every row
sums to 1. For a ViT, the CLS row (or any query's row) over the patch tokens, reshaped to the
patch grid, is the rollout map.

`reduce` combines the heads of a layer: "mean" (the paper), "max" or "min" (as in later
ViT explainability code), or a callable (H, N, N) → (N, N). Rows with every key masked
(all-zero rows) become the identity when `residual` > 0 and stay zero otherwise; nothing
is ever NaN. Works from dense probabilities only: a long trace (N > its dense limit) keeps
no N×N maps and is refused with the reason. Pure numpy; no Streamlit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

REDUCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda a: a.mean(axis=0),
    "max": lambda a: a.max(axis=0),
    "min": lambda a: a.min(axis=0),
}
RESIDUAL = 0.5  # the weight of the identity: Â = 0.5·A + 0.5·I as in Abnar & Zuidema


def reduce_heads(probs: np.ndarray, reduce: str | Callable = "mean", heads: Sequence[int] | None = None) -> np.ndarray:
    """(H, N, N) → (N, N) over the chosen `heads` (default: all)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2:
        return probs
    if probs.ndim != 3:
        raise ValueError(f"expected (H, N, N) attention, got shape {probs.shape}")
    if heads is not None:
        probs = probs[list(heads)]
    if callable(reduce):
        return np.asarray(reduce(probs), dtype=np.float64)
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown head reduction {reduce!r}; use one of {', '.join(REDUCTIONS)} or a function")
    return REDUCTIONS[reduce](probs)


def with_residual(a: np.ndarray, residual: float = RESIDUAL) -> np.ndarray:
    """(1 − residual)·A + residual·I with rows renormalised to sum to 1 (all-zero rows stay zero)."""
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must lie in [0, 1], got {residual}")
    a = (1.0 - residual) * np.asarray(a, dtype=np.float64) + residual * np.eye(a.shape[-1])
    sums = a.sum(axis=-1, keepdims=True)
    return np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)


def rollout(
    layers: Sequence[np.ndarray] | np.ndarray,
    residual: float = RESIDUAL,
    reduce: str | Callable = "mean",
    heads: Sequence[int] | None = None,
) -> np.ndarray:
    """Joint attention (N, N) of the layers in order (first layer first): Â_{L−1} ⋯ Â_0.

    `layers`: per layer (H, N, N) probabilities (or (N, N) already reduced), or one (L, H, N, N) array.
    """
    if len(layers) == 0:
        raise ValueError("rollout needs at least one layer")
    joint = None
    for probs in layers:
        a = with_residual(reduce_heads(probs, reduce, heads), residual)
        joint = a if joint is None else a @ joint
    return joint


def trace_rollout(
    trace,
    residual: float = RESIDUAL,
    reduce: str | Callable = "mean",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> np.ndarray:
    """Rollout (N, N) of a dense `Trace` through `layers` (default: all, in order)."""
    if not trace.dense:
        raise ValueError(
            f"rollout needs dense attention; this trace has {trace.n} tokens, over its dense limit "
            f"{trace.dense_limit}, and keeps only pooled maps"
        )
    layers = range(trace.n_layers) if layers is None else sorted(layers)
    return rollout([trace.attention(layer) for layer in layers], residual, reduce, heads)


def patch_tokens(trace) -> np.ndarray:
    """Token indices of a ViT trace's patches in row-major grid order (special tokens left out)."""
    if not trace.grid:
        raise ValueError(f"{trace.model_id} is not a vision model: its trace has no patch grid")
    rows, cols = trace.grid
    idx = np.flatnonzero(~np.asarray(trace.special, dtype=bool))
    if len(idx) != rows * cols:
        raise ValueError(f"the trace has {len(idx)} patch tokens but its grid is {rows}×{cols}")
    return idx


def to_grid(trace, row: np.ndarray) -> np.ndarray:
    """A (..., N) row over all tokens → (..., rows, cols) over the patch grid."""
    rows, cols = trace.grid or (0, 0)
    row = np.asarray(row)
    return row[..., patch_tokens(trace)].reshape(*row.shape[:-1], rows, cols)


def grid_rollout(
    trace,
    query: int = 0,
    residual: float = RESIDUAL,
    reduce: str | Callable = "mean",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> np.ndarray:
    """(rows, cols): the rollout row of token `query` (default 0, the CLS token) over the patch grid."""
    patch_tokens(trace)  # a clear error for a text trace before any work
    if not 0 <= query < trace.n:
        raise ValueError(f"query token {query} does not exist; the trace has tokens 0..{trace.n - 1}")
    return to_grid(trace, trace_rollout(trace, residual, reduce, layers, heads)[query])
