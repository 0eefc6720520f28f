"""Compare view: two traces of one input side by side, what changed per head and in the output."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.head_view import span_labels, token_labels
from app.views.model_grid import display_maps
from app.views.style import DIVERGING, SEQUENTIAL, finish

METRICS = {"moved": "attention moved", "kl": "KL(a ‖ b)", "js": "Jensen–Shannon", "mass_lost": "attention mass lost"}


DRAW_SIDE = 384  # three maps side by side: at most 384² cells each (float32: ~2.4 MB of JSON in all)


def side_by_side(a, b, layer: int, head: int) -> go.Figure:
    """a's map, b's map and b − a for one head (tiles of several tokens for long inputs, as in the head view)."""
    (ma, spans), (mb, _) = display_maps(a, layer, DRAW_SIDE), display_maps(b, layer, DRAW_SIDE)
    pa, pb = ma[head], mb[head]
    labels = token_labels(a.tokens) if spans is None else span_labels(a.tokens, spans)
    fig = make_subplots(rows=1, cols=3, subplot_titles=(a.variant, b.variant, "difference (b − a)"),
                        horizontal_spacing=0.06)
    top = max(float(pa.max()), float(pb.max()), 1e-12)
    diff = pb - pa
    lim = max(float(np.abs(diff).max()), 1e-12)
    for col, (z, scale, zmin, zmax) in enumerate(
        [(pa, SEQUENTIAL, 0, top), (pb, SEQUENTIAL, 0, top), (diff, DIVERGING, -lim, lim)], start=1
    ):
        fig.add_trace(go.Heatmap(
            z=z, x=labels, y=labels, colorscale=scale, zmin=zmin, zmax=zmax, showscale=col != 2,
            colorbar=dict(x=0.64 if col == 1 else 1.0, thickness=10, len=0.8),
            hovertemplate="query %{y}<br>key %{x}<br>%{z:.4f}<extra></extra>",
        ), row=1, col=col)
        fig.update_yaxes(autorange="reversed", showticklabels=col == 1, row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    return finish(fig, f"{a.model_id} · layer {layer} · head {head} · {a.variant} vs {b.variant}", height=460)


def per_head(cmp, which: str = "kl", *, a_name: str = "a", b_name: str = "b") -> go.Figure:
    """L × H heatmap of one divergence."""
    z = getattr(cmp, which)
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"H{h}" for h in range(z.shape[1])], y=[f"L{i}" for i in range(z.shape[0])],
        colorscale=SEQUENTIAL, zmin=0, colorbar=dict(thickness=12),
        hovertemplate="layer %{y} · head %{x}<br>%{z:.4f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    note = " (from pooled maps)" if cmp.approximate else ""
    return finish(fig, f"{METRICS[which]} per head{note}: {a_name} → {b_name}",
                  height=max(300, 80 + 24 * z.shape[0]))


def output_names(top: list[dict]) -> list[str]:
    """Bar labels of the top outputs: the decoded token or class in quotes (spaces visible), else the id."""
    names = [f"“{t['label']}”".replace("\n", "\\n") if t["label"] is not None else f"#{t['id']}" for t in top]
    if len(set(names)) < len(names):  # two ids that read the same: tell them apart
        names = [f"{n} #{t['id']}" for n, t in zip(names, top)]
    return names


def output_figure(output: dict, a_name: str, b_name: str) -> go.Figure:
    """Top entries of both output distributions, or the hidden-state cosine."""
    if output["kind"] == "hidden":
        fig = go.Figure(go.Bar(x=["mean cosine", "min cosine"], y=[output["mean_cosine"], output["min_cosine"]]))
        fig.update_yaxes(range=[min(0, output["min_cosine"]), 1])
        return finish(fig, f"output hidden states: {a_name} vs {b_name}", height=320)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(a_name, b_name))
    for col, top in enumerate((output["top_a"], output["top_b"]), start=1):
        names = output_names(top)
        fig.add_trace(go.Bar(x=[t["p"] for t in top][::-1], y=names[::-1], orientation="h", showlegend=False,
                             marker_color="#1f77b4" if col == 1 else "#ff7f0e"), row=1, col=col)
    head = f"output: KL {output['kl']:.4f} · top-1 agreement {output['top1_agreement']:.0%}"
    return finish(fig, head, height=340)
