"""What changed between two traces of one input: attention per head and the model's output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-12


@dataclass
class Comparison:
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


def _maps(trace, layer: int) -> np.ndarray:
    if trace.dense:
        return trace.attention(layer)
    pooled = trace.pooled(layer)  # long input: rows of tile means, renormalised
    return pooled / np.maximum(pooled.sum(-1, keepdims=True), EPS)


def compare(a, b) -> Comparison:
    """Per-head divergences of b's attention from a's, and the change in output."""
    check_comparable(a, b)
    L, H = a.n_layers, a.n_heads
    kl, js, lost = (np.zeros((L, H)) for _ in range(3))
    for layer in range(L):
        k, j, m = row_divergences(_maps(a, layer), _maps(b, layer))
        kl[layer], js[layer], lost[layer] = k.mean(-1), j.mean(-1), m.mean(-1)
    return Comparison(kl=kl, js=js, mass_lost=lost, output=output_change(a, b), approximate=not (a.dense and b.dense))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def output_change(a, b, top: int = 5) -> dict:
    """Next-token or class distributions: KL, top-1 agreement, the top entries; hidden states: cosine."""
    la, lb = np.asarray(a.logits, np.float64), np.asarray(b.logits, np.float64)
    if a.output_kind == "hidden":
        cos = np.sum(la * lb, -1) / np.maximum(np.linalg.norm(la, axis=-1) * np.linalg.norm(lb, axis=-1), EPS)
        return {"kind": "hidden", "mean_cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos))}
    pa, pb = softmax(la.reshape(-1, la.shape[-1])), softmax(lb.reshape(-1, lb.shape[-1]))
    kl = np.sum(pa * (np.log(pa + EPS) - np.log(pb + EPS)), -1)
    agree = pa.argmax(-1) == pb.argmax(-1)
    labels = a.labels
    tops = []
    for p in (pa[-1], pb[-1]):  # the last position (next token) or the single class row
        idx = np.argsort(-p)[:top]
        tops.append([{"id": int(i), "label": labels[i] if labels else None, "p": float(p[i])} for i in idx])
    return {"kind": a.output_kind, "kl": float(kl.mean()), "top1_agreement": float(agree.mean()),
            "top_a": tops[0], "top_b": tops[1]}
