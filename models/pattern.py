"""A model's own attention pattern in words, per layer: what `full` already does before any variant.

Adapters describe each attention layer with a short phrase ("global", "sliding window 4096",
"chunked 8192", "bidirectional local 128", joined with " · " by what else the layer adds:
"softcap 50", "learned sinks", "ALiBi", "relative position bias"). Traces keep that list in their
manifest (`native`), and the app shows `summarise(...)` next to the Model view and the Mask lab.
"""

from __future__ import annotations

import re

import numpy as np

GLOBAL = "global"
LEARNED_SINKS = "learned sinks"
ALIBI = "ALiBi"
RELATIVE_BIAS = "relative position bias"


def sliding(window: int, causal: bool = True) -> str:
    """transformers' windows: causal, the last `window` keys (self included); bidirectional, |i − j| ≤ window."""
    return f"sliding window {window}" if causal else f"bidirectional local ±{window}"


def chunked(size: int) -> str:
    return f"chunked {size}"


def softcap(cap: float) -> str:
    return f"softcap {cap:g}"


def join(*parts) -> str:
    """'sliding window 4096 · softcap 50': the layer's mask first, then what else it adds; falsy parts dropped."""
    return " · ".join(p for p in parts if p)


def summarise(per_layer: list[str] | None) -> str:
    """'layers 0,2,4: sliding window 4096; layers 1,3,5: global' — identical layers grouped, in order of first use."""
    if not per_layer:
        return ""
    groups: dict[str, list[int]] = {}
    for layer, phrase in enumerate(per_layer):
        groups.setdefault(phrase or GLOBAL, []).append(layer)
    if len(groups) == 1:
        return f"every layer: {next(iter(groups))}"
    return "; ".join(f"{_layers(layers)}: {phrase}" for phrase, layers in groups.items())


def _layers(layers: list[int]) -> str:
    """'layer 3', 'layers 0–5' for a run, else 'layers 0,2,4'."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}–{layers[-1]}"
    return "layers " + ",".join(map(str, layers))


def mask(phrase: str, n: int, causal: bool) -> np.ndarray | None:
    """bool (n, n): the keys query i may see under a layer's own window rule (causality included), from
    its phrase; None for a layer whose rule hides nothing (global)."""
    i, j = np.indices((n, n))
    if m := re.match(r"sliding window (\d+)", phrase):
        keep = i - j < int(m[1])
    elif m := re.match(r"bidirectional local ±(\d+)", phrase):
        keep = np.abs(i - j) <= int(m[1])
    elif m := re.match(r"chunked (\d+)", phrase):
        keep = i // int(m[1]) == j // int(m[1])
    else:
        return None
    return keep & (j <= i) if causal else keep
