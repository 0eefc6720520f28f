"""What changed between two traces of one input: attention per head and the model's output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EPS = 1e-12
TokenNames = Callable[[int], str]  # output id → its text (a tokenizer's decode), for outputs without labels


@dataclass
class Comparison:
    moved: np.ndarray  # (L, H) mean over rows of the total variation ½·Σ|a − b|: the attention mass that moved
    kl: np.ndarray  # (L, H) mean over rows of KL(a ‖ b)
    js: np.ndarray  # (L, H) mean over rows of the Jensen–Shannon divergence (nats)
    mass_lost: np.ndarray  # (L, H) mean over rows of a's mass on keys b gives zero weight
    output: dict  # what changed in the model's output
    approximate: bool  # True when computed from pooled maps (long inputs)


def check_comparable(a, b) -> None:
    if a.token_ids != b.token_ids:
        raise ValueError("the two traces tokenized their inputs differently; compare variants on one input, "
                         "or two models that share a tokenizer")
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        raise ValueError(f"the models differ in shape ({a.n_layers}×{a.n_heads} vs {b.n_layers}×{b.n_heads})")


def row_divergences(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KL(p‖q), JS(p, q) and p's mass where q is zero, per row of (..., N, N) maps; rows of zeros count 0."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    kl = np.sum(np.where(p > 0, p * (np.log(p + EPS) - np.log(q + EPS)), 0.0), -1)
    m = 0.5 * (p + q)
    js = 0.5 * np.sum(np.where(p > 0, p * (np.log(p + EPS) - np.log(m + EPS)), 0.0), -1) + 0.5 * np.sum(
        np.where(q > 0, q * (np.log(q + EPS) - np.log(m + EPS)), 0.0), -1
    )
    lost = np.sum(np.where(q == 0, p, 0.0), -1)
    return kl, js, lost


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """½·Σ_j |p_j − q_j| per row, in [0, 1]: the share of attention that went to other keys.

    Unlike KL(p ‖ q), it stays finite and proportional when q drops keys p uses (a sparse variant): KL is
    then dominated by log(1/ε) × the dropped mass and saturates near 20 nats for any sparse variant."""
    return 0.5 * np.abs(p.astype(np.float64) - q.astype(np.float64)).sum(-1)


def _maps(trace, layer: int) -> np.ndarray:
    if trace.dense:
        return trace.attention(layer)
    pooled = trace.pooled(layer)  # long input: rows of tile means, renormalised
    return pooled / np.maximum(pooled.sum(-1, keepdims=True), EPS)


def compare(a, b, names: TokenNames | None = None) -> Comparison:
    """Per-head divergences of b's attention from a's, and the change in output (`names` decodes output ids)."""
    check_comparable(a, b)
    L, H = a.n_layers, a.n_heads
    moved, kl, js, lost = (np.zeros((L, H)) for _ in range(4))
    for layer in range(L):
        pa, pb = _maps(a, layer), _maps(b, layer)
        k, j, m = row_divergences(pa, pb)
        kl[layer], js[layer], lost[layer] = k.mean(-1), j.mean(-1), m.mean(-1)
        moved[layer] = total_variation(pa, pb).mean(-1)
    return Comparison(moved=moved, kl=kl, js=js, mass_lost=lost, output=output_change(a, b, names=names),
                      approximate=not (a.dense and b.dense))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _label(trace, i: int, names: TokenNames | None) -> str | None:
    if trace.labels:
        return trace.labels[i]
    return names(i) if names is not None else None


def output_change(a, b, top: int = 5, names: TokenNames | None = None) -> dict:
    """Next-token or class distributions: KL, top-1 agreement, the top entries; hidden states: cosine."""
    la, lb = np.asarray(a.logits, np.float64), np.asarray(b.logits, np.float64)
    if a.output_kind == "hidden":
        cos = np.sum(la * lb, -1) / np.maximum(np.linalg.norm(la, axis=-1) * np.linalg.norm(lb, axis=-1), EPS)
        return {"kind": "hidden", "mean_cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos))}
    pa, pb = softmax(la.reshape(-1, la.shape[-1])), softmax(lb.reshape(-1, lb.shape[-1]))
    kl = np.sum(pa * (np.log(pa + EPS) - np.log(pb + EPS)), -1)
    agree = pa.argmax(-1) == pb.argmax(-1)
    tops = []
    for p in (pa[-1], pb[-1]):  # the last position (next token) or the single class row
        idx = np.argsort(-p)[:top]
        tops.append([{"id": int(i), "label": _label(a, int(i), names), "p": float(p[i])} for i in idx])
    return {"kind": a.output_kind, "kl": float(kl.mean()), "top1_agreement": float(agree.mean()),
            "top_a": tops[0], "top_b": tops[1]}


def prediction(trace, names: TokenNames | None = None, top: int = 3) -> str | None:
    """What the model predicts, in words: 'next token: “ the” 31 % · “ a” 12 %' or 'predicted class: 7 (98 %)';
    None for a model whose output is a hidden state."""
    if trace.output_kind == "hidden":
        return None
    logits = np.asarray(trace.logits, np.float64)
    p = softmax(logits.reshape(-1, logits.shape[-1]))[-1]
    idx = np.argsort(-p)[:top]
    entries = []
    for i in idx:
        label = _label(trace, int(i), names)
        entries.append(f"“{label}” {p[i]:.0%}" if label is not None else f"#{int(i)} {p[i]:.0%}")
    what = "next token" if trace.kind == "causal" else "predicted class"
    return f"{trace.model_id} · {trace.variant} · {what}: " + " · ".join(entries)
