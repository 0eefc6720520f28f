"""Model view: every layer × head as a thumbnail heatmap in one figure."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app.views.style import SEQUENTIAL, finish, title

THUMB = 48  # thumbnails are block-averaged to at most THUMB × THUMB cells


def block_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Average an (..., N, M) map into (..., ≤size, ≤size) tiles; tiles are uneven when size ∤ N."""
    return _pool_matrix(a.shape[-2], size) @ a @ _pool_matrix(a.shape[-1], size).T


def _pool_matrix(n: int, size: int) -> np.ndarray:
    """(bins, n) matrix whose rows average the members of each bin."""
    bins = min(size, n)
    which = (np.arange(n) * bins) // n
    m = np.zeros((bins, n))
    m[which, np.arange(n)] = 1.0
    return m / m.sum(1, keepdims=True)


def layer_maps(trace, layer: int) -> np.ndarray:
    """(H, n, n) maps to draw for one layer: dense probs, else the pooled maps."""
    return trace.attention_map(layer)


def model_grid(trace, *, thumb: int = THUMB, gap: int = 2) -> go.Figure:
    """All heads of all layers; rows are layers, columns heads. customdata holds (layer, head)."""
    L, H = trace.n_layers, trace.n_heads
    thumbs = [block_mean(layer_maps(trace, layer), thumb) for layer in range(L)]
    t = thumbs[0].shape[-1]
    step = t + gap
    canvas = np.full((L * step - gap, H * step - gap), np.nan)
    where = np.full(canvas.shape + (2,), -1)
    for layer, maps in enumerate(thumbs):
        for head in range(H):
            r0, c0 = layer * step, head * step
            # each thumbnail is scaled to its own max so weak and sharp heads both stay visible
            canvas[r0:r0 + t, c0:c0 + t] = maps[head] / max(maps[head].max(), 1e-12)
            where[r0:r0 + t, c0:c0 + t] = (layer, head)
    fig = go.Figure(go.Heatmap(
        z=canvas, colorscale=SEQUENTIAL, showscale=False, customdata=where, xgap=0, ygap=0,
        hovertemplate="layer %{customdata[0]} · head %{customdata[1]}<extra></extra>",
    ))
    centers = np.arange(L) * step + t / 2
    fig.update_yaxes(autorange="reversed", tickvals=centers, ticktext=[f"L{i}" for i in range(L)],
                     showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    fig.update_xaxes(tickvals=np.arange(H) * step + t / 2, ticktext=[f"H{h}" for h in range(H)],
                     side="top", showgrid=False, zeroline=False, constrain="domain")
    size = "pooled" if not trace.dense else "attention"
    return finish(fig, title(trace, f"{size} of every head ({trace.n} tokens, each map scaled to its max)"),
                  height=max(320, 70 + L * 46), width=max(420, 120 + H * 60))


def cell_at(fig_point: dict) -> tuple[int, int] | None:
    """(layer, head) of a clicked point of `model_grid`, None for the gaps."""
    data = fig_point.get("customdata")
    if not data or data[0] < 0:
        return None
    return int(data[0]), int(data[1])
