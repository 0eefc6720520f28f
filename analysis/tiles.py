"""Exact attention tiles of a long trace, recomputed from q, k and the log-sum-exp of each row."""

from __future__ import annotations

import numpy as np
import torch

from analysis.context import context_of, variant_of
from kernels.maps import exact_tile
from kernels.native import NativeAttention

MAX_TILE = 512  # a tile side the views can draw as a labelled heatmap


def tile(trace, layer: int, head: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """probs[rows, cols] of one head, exact. Needs a trace recorded with q and k (qk=True)."""
    return layer_tile(trace, layer, rows, cols)[head]


def layer_tile(trace, layer: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """(H, rows, cols) probabilities of every head of one layer, exact (a variant's rule may depend on the head)."""
    (q0, q1), (k0, k1) = rows, cols
    if not (0 <= q0 < q1 <= trace.n and 0 <= k0 < k1 <= trace.n):
        raise ValueError(f"tile rows {rows} / cols {cols} must lie within 0..{trace.n}")
    if q1 - q0 > MAX_TILE or k1 - k0 > MAX_TILE:
        raise ValueError(f"a tile is at most {MAX_TILE}×{MAX_TILE}; zoom in further")
    if trace.dense:  # dense trace: nothing to recompute
        return trace.attention(layer)[:, q0:q1, k0:k1]
    if not (trace.has(layer, "q") and trace.has(layer, "lse")):
        raise ValueError("this long trace kept no q, k and LSE; trace it again with q and k (--qk) to zoom in")
    q = torch.from_numpy(trace.q(layer))
    k = torch.from_numpy(trace.k(layer))
    lse = torch.from_numpy(trace.lse(layer))
    out = exact_tile(q, k, lse, rows, cols, scale=trace.scale(layer), ctx=context_of(trace, layer),
                     variant=variant_of(trace, layer), native=native_of(trace, layer))
    return out.numpy()


def native_of(trace, layer: int) -> NativeAttention | None:
    """The model's own score modifiers of one layer as the recorder kept them (models.recorder), or None."""
    kept = {name: torch.from_numpy(np.asarray(trace.stat(layer, name)))
            for name in ("softcap", "key_bias", "pair_bias", "sink_logits") if trace.has(layer, name)}
    if not kept:
        return None
    softcap = kept.pop("softcap", None)
    biases = {name: value[None] for name, value in kept.items() if name != "sink_logits"}  # batch axis back
    return NativeAttention(softcap=None if softcap is None else float(softcap), sink_logits=kept.get("sink_logits"),
                           **biases)
