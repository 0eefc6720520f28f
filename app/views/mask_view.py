"""Mask lab views: a variant's mask or bias as a matrix, and on the image grid for one query."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app.views.head_view import token_labels
from app.views.style import SEQUENTIAL, finish


def mask_figure(keep: np.ndarray, bias: np.ndarray | None, name: str, tokens: list[str] | None = None) -> go.Figure:
    """One head's (N, N) mask: kept keys in colour (the bias value when there is one), masked keys blank."""
    n = keep.shape[-1]
    if bias is None:
        z = np.where(keep, 1.0, np.nan)
        trace = go.Heatmap(z=z, colorscale=[[0, "#2a788e"], [1, "#2a788e"]], showscale=False,
                           hovertemplate="query %{y} · key %{x}: kept<extra></extra>")
    else:
        z = np.where(keep, bias, np.nan)
        trace = go.Heatmap(z=z, colorscale=SEQUENTIAL, colorbar=dict(title="bias", thickness=12),
                           hovertemplate="query %{y} · key %{x}<br>bias %{z:.3f}<extra></extra>")
    if tokens is not None and n <= 96:
        labels = token_labels(tokens)
        trace.update(x=labels, y=labels)
    fig = go.Figure(trace)
    fig.update_yaxes(autorange="reversed", title="query")
    fig.update_xaxes(title="key")
    kept = keep.mean()
    return finish(fig, f"{name} · {n} tokens · {kept:.1%} of pairs kept", width=620, height=580)


def grid_figure(keep_row: np.ndarray, grid: tuple[int, int], n_prefix: int, query: int, name: str,
                bias_row: np.ndarray | None = None) -> go.Figure:
    """The keys one query keeps, laid out on the patch grid (special tokens listed in the title)."""
    rows, cols = grid
    patches = keep_row[n_prefix:].reshape(rows, cols)
    z = patches.astype(float) if bias_row is None else np.where(patches, bias_row[n_prefix:].reshape(rows, cols),
                                                                  np.nan)
    fig = go.Figure(go.Heatmap(z=np.where(patches, z, np.nan), colorscale=SEQUENTIAL, showscale=bias_row is not None,
                               hovertemplate="row %{y} · col %{x}<extra></extra>", xgap=1, ygap=1))
    if query >= n_prefix:
        r, c = divmod(query - n_prefix, cols)
        fig.add_trace(go.Scatter(x=[c], y=[r], mode="markers", marker=dict(symbol="x", size=14, color="#d62728"),
                                 name="query", hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False)
    fig.update_xaxes(showgrid=False)
    specials = "sees the special tokens" if keep_row[:n_prefix].all() else "does not see every special token"
    who = "CLS" if query < n_prefix else f"patch ({divmod(query - n_prefix, cols)[0]}, {(query - n_prefix) % cols})"
    return finish(fig, f"{name} · query {who} · {specials}", width=460, height=460)
