"""Per-head summaries of one trace: entropy, attention distance, sink mass, previous-token score."""

from __future__ import annotations

import numpy as np

METRICS = {
    "entropy": "entropy (nats)",
    "distance": "mean attention distance",
    "sink": "mass on the first token",
    "previous_token": "previous-token score",
}
BAND = 256  # query rows per exact tile when a long trace's previous-token score is recomputed


def trace_head_metrics(trace) -> dict[str, np.ndarray]:
    """(L, H) arrays, each a mean over the trace's query rows (previous-token: rows i ≥ 1, text only)."""
    L = trace.n_layers
    out = {name: np.stack([trace.stat(layer, name).mean(-1) for layer in range(L)])
           for name in ("entropy", "distance", "sink")}
    prev = previous_token(trace)
    if prev is not None:
        out["previous_token"] = prev
    return out


def previous_token(trace) -> np.ndarray | None:
    """(L, H) mean attention of query i on key i − 1 over rows i ≥ 1 (text only; None for a ViT or one token).

    Dense traces read it off the maps; long traces recompute the sub-diagonal exactly from q, k and the LSE,
    band by band; a long trace without q and k cannot give it (`why_no_previous_token` says so)."""
    if why_no_previous_token(trace) is not None:
        return None
    if trace.dense:
        return np.stack([np.diagonal(trace.attention(layer), offset=-1, axis1=-2, axis2=-1).mean(-1)
                         for layer in range(trace.n_layers)])
    from analysis.tiles import layer_tile

    out = np.zeros((trace.n_layers, trace.n_heads))
    for layer in range(trace.n_layers):
        for a in range(1, trace.n, BAND):
            b = min(trace.n, a + BAND)
            band = layer_tile(trace, layer, (a, b), (a - 1, b - 1))  # row i, column i − 1 on the diagonal
            out[layer] += np.diagonal(band, axis1=-2, axis2=-1).sum(-1)
    return out / (trace.n - 1)


def why_no_previous_token(trace) -> str | None:
    """Why a trace has no previous-token score, or None when it has one."""
    if trace.kind == "vit":
        return "a ViT's patches have no previous token"
    if trace.n < 2:
        return "the input has one token"
    if trace.dense:
        return None
    if not (trace.has(0, "q") and trace.has(0, "lse")):
        return "this long trace kept no q and k to recompute it from (trace it with q and k)"
    from analysis.context import variant_of

    for layer in range(trace.n_layers):
        v = variant_of(trace, layer)
        if v.row_mask is not None or v.row_probs is not None or v.attend is not None:
            return f"{v.name} decides whole rows, so a long trace cannot recompute single entries; use a shorter input"
    return None
