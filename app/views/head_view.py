"""Head view: one head's attention as a heatmap with token labels."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app.views.model_grid import layer_maps
from app.views.style import SEQUENTIAL, finish, title


def token_labels(tokens: list[str], limit: int = 14) -> list[str]:
    """Unique, readable axis labels: position plus the token, clipped to `limit` characters."""
    out = []
    for i, t in enumerate(tokens):
        t = t.replace("\n", "\\n")
        out.append(f"{i} {t if len(t) <= limit else t[: limit - 1] + '…'}")
    return out


def head_heatmap(trace, layer: int, head: int) -> go.Figure:
    """Rows are queries, columns keys; colour is the attention probability."""
    _check(trace, layer, head)
    maps = layer_maps(trace, layer)[head]
    labels = token_labels(trace.tokens) if trace.dense else None
    fig = go.Figure(go.Heatmap(
        z=maps, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0,
        colorbar=dict(title="p", thickness=12),
        hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.4f}<extra></extra>",
    ))
    n = maps.shape[-1]
    fig.update_yaxes(autorange="reversed", title="query", automargin=True, tickfont=dict(size=_tick(n)))
    fig.update_xaxes(title="key", automargin=True, tickangle=-60, tickfont=dict(size=_tick(n)), side="bottom")
    side = int(np.clip(200 + 16 * n, 420, 900))
    return finish(fig, title(trace, f"layer {layer} · head {head}"), width=side + 120, height=side)


def _tick(n: int) -> int:
    return 12 if n <= 24 else 10 if n <= 48 else 8


def _check(trace, layer: int, head: int) -> None:
    if not 0 <= layer < trace.n_layers or not 0 <= head < trace.n_heads:
        raise ValueError(
            f"layer {layer} head {head} does not exist; the trace has layers 0..{trace.n_layers - 1} "
            f"and heads 0..{trace.n_heads - 1}"
        )
