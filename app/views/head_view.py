"""Head view: one head's attention as a heatmap with token labels."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app.views.model_grid import display_maps
from app.views.style import SEQUENTIAL, finish, title


def token_labels(tokens: list[str], limit: int = 14) -> list[str]:
    """Unique, readable axis labels: position plus the token, clipped to `limit` characters."""
    out = []
    for i, t in enumerate(tokens):
        t = t.replace("\n", "\\n")
        out.append(f"{i} {t if len(t) <= limit else t[: limit - 1] + '…'}")
    return out


def head_heatmap(trace, layer: int, head: int) -> go.Figure:
    """Rows are queries, columns keys; colour is the attention probability.

    Up to DRAW_MAX tokens every cell is one query × key, labelled with its tokens. Longer inputs draw
    tiles (the trace's pooled map, or a dense map block-averaged): each cell is the mean probability of
    its queries × keys, the axes read token positions and the hover names each tile's tokens and text."""
    _check(trace, layer, head)
    maps, spans = display_maps(trace, layer)
    z = maps[head]
    n = z.shape[-1]
    side = int(np.clip(200 + 16 * n, 420, 900))
    if spans is None:
        labels = token_labels(trace.tokens)
        fig = go.Figure(go.Heatmap(
            z=z, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0, colorbar=dict(title="p", thickness=12),
            hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.4f}<extra></extra>",
        ))
        fig.update_yaxes(autorange="reversed", title="query", tickfont=dict(size=_tick(n)))
        fig.update_xaxes(title="key", tickangle=-60, tickfont=dict(size=_tick(n)), side="bottom")
        return finish(fig, title(trace, f"layer {layer} · head {head}"), width=side + 120, height=side)
    labels = span_labels(trace.tokens, spans)
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0, colorbar=dict(title="mean p", thickness=12),
        hovertemplate="queries %{y}<br>keys %{x}<br>mean p = %{z:.3g}<extra></extra>",
    ))
    every = range(0, n, max(1, n // 8))  # about 8 ticks, each at a tile's first token position
    for axis, name in ((fig.update_yaxes, "query position"), (fig.update_xaxes, "key position")):
        axis(title=name, tickmode="array", tickvals=[labels[i] for i in every],
             ticktext=[str(spans[i][0]) for i in every])
    fig.update_yaxes(autorange="reversed")
    per = trace.n / n
    return finish(fig, title(trace, f"layer {layer} · head {head} · {n}² tiles of ~{per:.3g} tokens"),
                  width=side + 120, height=side)


def span_labels(tokens: list[str], spans: list[tuple[int, int]], limit: int = 24) -> list[str]:
    """'120–123 ‹the cat sat›' per tile: its token positions (inclusive) and the start of its text."""
    out = []
    for a, b in spans:
        text = "".join(tokens[a:b]).replace("\n", " ").strip()
        text = text if len(text) <= limit else text[: limit - 1] + "…"
        out.append(f"{a}–{b - 1} ‹{text}›" if b - a > 1 else f"{a} ‹{text}›")
    return out


def region(spans: list[tuple[int, int]] | None, n: int, lo: float, hi: float) -> tuple[int, int]:
    """Token range [start, end) of the cells an axis range [lo, hi] shows (cell c is centred on c)."""
    lo, hi = sorted((lo, hi))
    cells = len(spans) if spans is not None else n
    first = int(np.clip(np.ceil(lo - 0.5), 0, cells - 1))
    last = int(np.clip(np.floor(hi + 0.5), first, cells - 1))
    if spans is None:
        return first, last + 1
    return spans[first][0], spans[last][1]


def _tick(n: int) -> int:
    return 12 if n <= 24 else 10 if n <= 48 else 8


def _check(trace, layer: int, head: int) -> None:
    if not 0 <= layer < trace.n_layers or not 0 <= head < trace.n_heads:
        raise ValueError(
            f"layer {layer} head {head} does not exist; the trace has layers 0..{trace.n_layers - 1} "
            f"and heads 0..{trace.n_heads - 1}"
        )


HEAD_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
                "#999999", "#882255", "#44AA99", "#117733"]  # Okabe–Ito, then Tol: colour-blind safe
MAX_LINES_N = 160  # beyond this many tokens the lines view is unreadable; use the heatmap


def token_lines(trace, layer: int, heads: list[int], *, focus: int | None = None, threshold: float = 0.02,
                levels: int = 6) -> go.Figure:
    """Queries on the left, keys on the right, a line per weight above `threshold`, opacity = weight.

    One colour per head. With `focus`, only that query's lines are drawn, at full strength.
    """
    for head in heads:
        _check(trace, layer, head)
    n = trace.n
    if n > MAX_LINES_N:
        raise ValueError(f"the lines view draws up to {MAX_LINES_N} tokens (this input has {n}); use the heatmap")
    probs = trace.attention(layer)
    fig = go.Figure()
    edges = np.linspace(threshold, 1.0, levels + 1)
    for head in heads:
        p = probs[head]
        colour = HEAD_COLOURS[head % len(HEAD_COLOURS)]
        # the colour key: one legend entry per head, whichever opacity levels it has lines in
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=3),
                                 name=f"head {head}", legendgroup=f"h{head}"))
        rows = [focus] if focus is not None else range(n)
        for lvl in range(levels):  # one trace per opacity level: plotly has one opacity per trace
            lo, hi = edges[lvl], edges[lvl + 1]
            xs, ys = [], []
            for i in rows:
                for j in np.nonzero((p[i] >= lo) & ((p[i] < hi) | (lvl == levels - 1)))[0]:
                    xs += [0, 1, None]
                    ys += [i, int(j), None]
            if xs:
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, mode="lines", line=dict(color=colour, width=2), hoverinfo="skip",
                    opacity=float(min(1.0, 0.15 + hi)), showlegend=False, name=f"head {head}",
                    legendgroup=f"h{head}",
                ))
    labels = [t.replace("\n", "\\n") for t in trace.tokens]
    for x, side in ((0, "left"), (1, "right")):  # query labels left of their dots, key labels right
        fig.add_trace(go.Scatter(
            x=[x] * n, y=list(range(n)), mode="text+markers", text=labels, textposition=f"middle {side}",
            marker=dict(size=4, color="#555"), showlegend=False, customdata=list(range(n)),
            hovertemplate="%{text} (position %{customdata})<extra></extra>",
        ))
    fig.update_yaxes(autorange="reversed", visible=False)
    fig.update_xaxes(visible=False, range=[-0.9, 1.9])
    fig.update_layout(showlegend=True, legend=dict(title="colour", orientation="h", x=0, y=0, yanchor="top"))
    what = f"query {focus} ({labels[focus]})" if focus is not None else "every query"
    return finish(fig, title(trace, f"layer {layer} · heads {', '.join(map(str, heads))} · {what}"),
                  width=560, height=max(360, 70 + 18 * n))


def tile_heatmap(trace, layer: int, head: int, rows: tuple[int, int], cols: tuple[int, int],
                 probs: np.ndarray) -> go.Figure:
    """An exact tile of a long trace, labelled with its tokens; the colour scale runs from 0 to the tile's max."""
    labels = token_labels(trace.tokens)
    ylab, xlab = labels[rows[0]:rows[1]], labels[cols[0]:cols[1]]
    fig = go.Figure(go.Heatmap(z=np.asarray(probs, dtype=np.float32), x=xlab, y=ylab, colorscale=SEQUENTIAL, zmin=0,
                               colorbar=dict(title="p", thickness=12),
                               hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.5f}<extra></extra>"))
    size = 11 if max(len(xlab), len(ylab)) <= 64 else 9
    fig.update_yaxes(autorange="reversed", title="query", tickfont=dict(size=size))
    fig.update_xaxes(title="key", tickangle=-60, tickfont=dict(size=size))
    where = f"queries {rows[0]}–{rows[1] - 1} × keys {cols[0]}–{cols[1] - 1}"
    return finish(fig, title(trace, f"layer {layer} · head {head} · exact tile {where}"), width=760, height=700)
