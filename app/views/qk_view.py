"""Query–key views (AttentionViz): the joint scatter, the all-heads matrix, a point's attention row.

Pure builders over `analysis.qk_embed` results; every point's customdata is its index in the embedding.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.head_view import token_labels
from app.views.style import SEQUENTIAL, finish

# Okabe–Ito, the colour-blind-safe palette; queries and keys also differ by marker symbol
ROLE_COLOURS = {"query": "#E69F00", "key": "#0072B2"}
KIND_COLOURS = {"special": "#CC79A7", "word": "#0072B2", "punctuation": "#D55E00", "number": "#009E73",
                "CLS": "#CC79A7", "patch": "#56B4E9"}
SYMBOLS = {"query": "circle", "key": "diamond"}
SCALES = {"position": SEQUENTIAL, "norm": "Cividis", "input": SEQUENTIAL}
LABELS = {"role": "query / key", "position": "position", "token_kind": "token kind", "norm": "norm", "input": "input"}
GL_ABOVE = 4000  # 2D scatters with more points draw with WebGL


# Hover context by number of points, so that a figure stays well under 5 MB of JSON at any size:
# the whole context up to 4000 points, 20 characters either side up to 12 000, none above.
CONTEXT_WIDTH = ((4000, None), (12000, 20))


def hover_texts(emb) -> list[str]:
    """Per point: role, token, position, input, norm, and the token in its context (bold)."""
    width = next((w for most, w in CONTEXT_WIDTH if len(emb) <= most), 0)
    out = []
    for i in range(len(emb)):
        text = (f"<b>{emb.role[i]}</b> {html.escape(repr(emb.token[i]), quote=False)} · {emb.token_kind[i]}<br>"
                f"position {emb.position[i]} · input {emb.input[i]} · norm {emb.norm[i]:.2f}")
        if width != 0:
            ctx = html.escape(_around(emb.context[i], width), quote=False)
            text += "<br>" + ctx.replace("«", "<b>").replace("»", "</b>")
        out.append(text)
    return out


def _around(context: str, width: int | None) -> str:
    """The context cut to `width` characters either side of the marked «token» (all of it for None)."""
    start, end = context.find("«"), context.find("»")
    if width is None or start < 0 or end < 0:
        return context
    left, right = context[:start], context[end + 1:]
    left = left if len(left) <= width else "…" + left[-width:]
    right = right if len(right) <= width else right[:width] + "…"
    return f"{left}{context[start:end + 1]}{right}"


def heading(emb) -> str:
    return f"{emb.model_id} · layer {emb.layer} · head {emb.head} · {emb.method.upper()} {emb.dims}D"


def scatter(emb, colour: str = "role", *, selected: int | None = None, marker_size: float | None = None) -> go.Figure:
    """Queries and keys of one head in one space (2D or 3D), coloured by `colour`; hover shows the context."""
    values = emb.field(colour)
    text = np.asarray(hover_texts(emb), dtype=object)
    size = marker_size or (6 if len(emb) < 2000 else 4 if len(emb) < 10000 else 3)
    symbols = np.array([SYMBOLS[r] for r in emb.role])
    fig = go.Figure()
    if colour in ("role", "token_kind"):
        palette = ROLE_COLOURS if colour == "role" else KIND_COLOURS
        for cat in [c for c in palette if c in set(values.tolist())]:
            idx = np.flatnonzero(values == cat)
            fig.add_trace(_points(emb, idx, text, symbols, size, dict(color=palette[cat]), name=str(cat)))
    else:
        marker = dict(color=values.astype(float), colorscale=SCALES[colour], showscale=True,
                      colorbar=dict(title=LABELS[colour], thickness=12))
        fig.add_trace(_points(emb, np.arange(len(emb)), text, symbols, size, marker, name="● query  ◆ key"))
    if selected is not None and 0 <= selected < len(emb):
        ring = dict(color="rgba(0,0,0,0)", size=size * 3, line=dict(color="black", width=2))
        fig.add_trace(_points(emb, np.array([selected]), text, symbols, size, ring, name="selected"))
    if emb.dims == 3:
        fig.update_layout(scene=dict(xaxis_title="", yaxis_title="", zaxis_title="", aspectmode="data"))
    else:
        fig.update_xaxes(showticklabels=False, zeroline=False)
        fig.update_yaxes(showticklabels=False, zeroline=False, scaleanchor="x")
    fig.update_layout(legend=dict(title=LABELS[colour], itemsizing="constant"), hoverlabel=dict(align="left"))
    return finish(fig, f"{heading(emb)} · {len(emb) // 2} queries + keys", height=640)


def _points(emb, idx, text, symbols, size, marker, name) -> go.BaseTraceType:
    shapes = symbols[idx]
    marker = dict(marker, size=size, symbol=shapes[0] if len(set(shapes)) == 1 else shapes)  # one role: one symbol
    if "color" in marker and not isinstance(marker["color"], str):
        marker["color"] = marker["color"][idx]
    common = dict(mode="markers", name=name, marker=marker, customdata=idx, text=text[idx],
                  hovertemplate="%{text}<extra></extra>")
    c = emb.coords[idx].astype(np.float32)
    if emb.dims == 3:
        return go.Scatter3d(x=c[:, 0], y=c[:, 1], z=c[:, 2], **common)
    cls = go.Scattergl if len(emb) > GL_ABOVE else go.Scatter
    return cls(x=c[:, 0], y=c[:, 1], **common)


def point_at(fig_point: dict | None) -> int | None:
    """Embedding index of a clicked point of `scatter`, None for anything else."""
    data = (fig_point or {}).get("customdata")
    if isinstance(data, list | tuple):
        data = data[0] if data else None
    return int(data) if isinstance(data, int | float) else None


def heads_matrix(embs: list, *, selected_head: int | None = None, cols: int | None = None) -> go.Figure:
    """Small multiples: a 2D PCA of queries and keys per head of one layer; customdata is the head."""
    n = len(embs)
    cols = cols or min(n, 6)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.02, vertical_spacing=0.06,
                        subplot_titles=[f"<b>H{e.head}</b>" if e.head == selected_head else f"H{e.head}" for e in embs])
    for j, e in enumerate(embs):
        for role, colour in ROLE_COLOURS.items():
            idx = np.flatnonzero(e.role == role)
            fig.add_trace(go.Scattergl(
                x=e.coords[idx, 0], y=e.coords[idx, 1], mode="markers", name=role, legendgroup=role,
                showlegend=j == 0, marker=dict(color=colour, size=3, symbol=SYMBOLS[role]),
                customdata=np.full(len(idx), e.head), hovertemplate=f"head {e.head} · {role}<extra></extra>",
            ), row=j // cols + 1, col=j % cols + 1)
    fig.update_xaxes(showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, showgrid=False)
    e0 = embs[0]
    return finish(fig, f"{e0.model_id} · layer {e0.layer} · every head (PCA, {len(e0) // 2} tokens; click one)",
                  height=60 + rows * 190)


def attention_row(row) -> go.Figure:
    """The selected token's attention in its input, stock and (when set) under the variant."""
    labels = token_labels(row.tokens)
    fig = go.Figure(go.Bar(x=labels, y=row.full, name="full", marker_color=ROLE_COLOURS["key"],
                           hovertemplate="%{x}<br>p = %{y:.4f}<extra>full</extra>"))
    if row.changed is not None:
        fig.add_trace(go.Bar(x=labels, y=row.changed, name=row.variant, marker_color=ROLE_COLOURS["query"],
                             hovertemplate="%{x}<br>p = %{y:.4f}<extra>variant</extra>"))
    fig.add_vline(x=row.position, line=dict(color="black", dash="dot", width=1))
    tok = row.tokens[row.position]
    what = (f"query {row.position} {tok!r} attends to (its row)" if row.role == "query"
            else f"key {row.position} {tok!r} is attended by (its column)")
    fig.update_layout(barmode="group", bargap=0.15, legend=dict(orientation="h", y=1.02, x=1, xanchor="right"))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=10 if len(labels) <= 48 else 7), automargin=True)
    fig.update_yaxes(title="p", rangemode="tozero")
    return finish(fig, f"layer {row.layer} · head {row.head} · input {row.input}: {what}", height=380)


def map_change(row) -> go.Figure:
    """The head's map for the point's input: stock next to the variant (only when a variant is set)."""
    maps = [("full", row.full_map)] + ([(row.variant, row.changed_map)] if row.changed_map is not None else [])
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=[m[0] for m in maps], horizontal_spacing=0.08)
    zmax = max(float(m.max()) for _, m in maps) or 1.0
    for j, (_, m) in enumerate(maps):
        fig.add_trace(go.Heatmap(z=m, colorscale=SEQUENTIAL, zmin=0, zmax=zmax, showscale=j == len(maps) - 1,
                                 colorbar=dict(title="p", thickness=12),
                                 hovertemplate="query %{y} · key %{x}<br>p = %{z:.4f}<extra></extra>"), 1, j + 1)
        fig.update_yaxes(autorange="reversed", title="query" if j == 0 else None, row=1, col=j + 1)
        fig.update_xaxes(title="key", row=1, col=j + 1)
    return finish(fig, f"layer {row.layer} · head {row.head} · input {row.input}: the head's map", height=420)
