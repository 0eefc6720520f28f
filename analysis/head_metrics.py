"""Per-head summaries of one trace: entropy, attention distance, sink mass, previous-token score."""

from __future__ import annotations

import numpy as np

METRICS = {
    "entropy": "entropy (nats)",
    "distance": "mean attention distance",
    "sink": "mass on the first token",
    "previous_token": "previous-token score",
}


def trace_head_metrics(trace) -> dict[str, np.ndarray]:
    """(L, H) arrays, each a mean over the trace's query rows (previous-token: rows i ≥ 1, text only)."""
    L = trace.n_layers
    out = {name: np.stack([trace.stat(layer, name).mean(-1) for layer in range(L)])
           for name in ("entropy", "distance", "sink")}
    if trace.kind != "vit" and trace.dense and trace.n > 1:
        out["previous_token"] = np.stack([
            np.diagonal(trace.attention(layer), offset=-1, axis1=-2, axis2=-1).mean(-1) for layer in range(L)
        ])
    return out
