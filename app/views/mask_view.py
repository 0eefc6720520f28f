"""Mask lab views: a variant's mask or bias as a matrix, and on the image grid for one query."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.mask_stats import kept
from app.views.head_view import token_labels
from app.views.model_grid import DRAW_MAX, block_mean, tile_spans
from app.views.style import SEQUENTIAL, finish


def mask_figure(keep: np.ndarray, bias: np.ndarray | None, name: str, tokens: list[str] | None = None, *,
                causal: bool = False) -> go.Figure:
    """One head's (N, N) mask: kept keys in colour (the bias value when there is one), masked keys blank.

    Above DRAW_MAX tokens each cell is a tile of several tokens, coloured by the share of its pairs kept
    (or their mean bias). The title's share kept counts the pairs the model computes (its causal triangle
    for a decoder), as analysis.mask_stats.kept and the Mask lab's numbers do."""
    n = keep.shape[-1]
    share = kept(keep, causal)
    if n > DRAW_MAX:
        frac = block_mean(keep.astype(np.float32), DRAW_MAX)
        if bias is None:
            z = np.where(frac > 0, frac, np.nan)
            trace = go.Heatmap(z=z, colorscale=SEQUENTIAL, zmin=0, zmax=1, colorbar=dict(title="kept", thickness=12),
                               hovertemplate="queries %{y} · keys %{x}<br>%{z:.0%} kept<extra></extra>")
        else:
            mean_bias = block_mean(np.where(keep, bias, 0.0).astype(np.float32), DRAW_MAX) / np.maximum(frac, 1e-12)
            z = np.where(frac > 0, mean_bias, np.nan)
            trace = go.Heatmap(z=z, colorscale=SEQUENTIAL, colorbar=dict(title="mean bias", thickness=12),
                               hovertemplate="queries %{y} · keys %{x}<br>mean bias %{z:.3f}<extra></extra>")
        spans = tile_spans(n, z.shape[-1])
        trace.update(x=[a for a, _ in spans], y=[a for a, _ in spans])
        what = f"{n} tokens in tiles of ~{n / z.shape[-1]:.3g}"
    elif bias is None:
        z = np.where(keep, 1.0, np.nan).astype(np.float32)
        trace = go.Heatmap(z=z, colorscale=[[0, "#2a788e"], [1, "#2a788e"]], showscale=False,
                           hovertemplate="query %{y} · key %{x}: kept<extra></extra>")
        what = f"{n} tokens"
    else:
        z = np.where(keep, bias, np.nan).astype(np.float32)
        trace = go.Heatmap(z=z, colorscale=SEQUENTIAL, colorbar=dict(title="bias", thickness=12),
                           hovertemplate="query %{y} · key %{x}<br>bias %{z:.3f}<extra></extra>")
        what = f"{n} tokens"
    if tokens is not None and n <= 96:
        labels = token_labels(tokens)
        trace.update(x=labels, y=labels)
    fig = go.Figure(trace)
    fig.update_yaxes(autorange="reversed", title="query")
    fig.update_xaxes(title="key")
    return finish(fig, f"{name} · {what} · {share:.1%} of pairs kept", width=620, height=580)


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
