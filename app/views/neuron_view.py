"""Neuron view (Vig, 2019, "A Multiscale Visualization of Attention in the Transformer Model").

For one layer, head and query token i, how the attention row is made: the query vector q_i,
every key k_j, their elementwise product q_i∘k_j (whose sum is the score), the scaled score
q_i·k_j·scale and its softmax. q and k are the recorded ones (after rotary embedding, key
heads expanded for grouped-query attention), so this works for any model traced with qk=True.

The softmax here is recomputed from q and k (with the causal mask for causal models) and
checked against the recorded probabilities: with the `full` variant they agree; a variant
that masks, biases or approximates shows up as a difference, and the figure says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.head_view import token_labels
from app.views.style import DIVERGING, finish, title

MAX_KEYS = 64  # above this many keys the figure keeps the keys with the most attention
ATOL = 1e-4  # recomputed vs recorded probabilities


@dataclass
class NeuronRow:
    """Everything the neuron view draws for one query; arrays over all N keys."""

    layer: int
    head: int
    query: int
    q: np.ndarray  # (D,)
    k: np.ndarray  # (N, D)
    qk: np.ndarray  # (N, D) elementwise q_i ∘ k_j
    scores: np.ndarray  # (N,) q_i·k_j·scale, −inf where masked
    softmax: np.ndarray  # (N,) recomputed
    recorded: np.ndarray | None  # (N,) the trace's probabilities, None for a long (non-dense) trace
    scale: float
    causal: bool

    @property
    def max_diff(self) -> float | None:
        """max |recomputed − recorded| over the row; None when the trace kept no dense probabilities."""
        return None if self.recorded is None else float(np.abs(self.softmax - self.recorded).max())

    def matches(self, atol: float = ATOL) -> bool | None:
        d = self.max_diff
        return None if d is None else d <= atol


def neuron_row(trace, layer: int, head: int, query: int, *, scale: float | None = None) -> NeuronRow:
    """q, k, q∘k, scores and softmax of one query row, recomputed in float64 from the recorded q and k."""
    if not 0 <= layer < trace.n_layers or not 0 <= head < trace.n_heads:
        raise ValueError(
            f"layer {layer} head {head} does not exist; the trace has layers 0..{trace.n_layers - 1} "
            f"and heads 0..{trace.n_heads - 1}"
        )
    if not trace.has(layer, "q"):
        raise ValueError(
            "the neuron view needs queries and keys: this trace has none; make a trace with qk=True "
            "(`attnscope trace --qk` on the command line)"
        )
    if not 0 <= query < trace.n:
        raise ValueError(f"query token {query} does not exist; the trace has tokens 0..{trace.n - 1}")
    q = np.asarray(trace.q(layer)[head, query], dtype=np.float64)
    k = np.asarray(trace.k(layer)[head], dtype=np.float64)
    if scale is None:  # the model's own scale when the trace recorded it, else 1/√D
        scale = trace.scale(layer)
    qk = q[None, :] * k
    scores = qk.sum(axis=1) * scale
    causal = trace.kind == "causal"
    if causal:
        scores[query + 1:] = -np.inf
    e = np.exp(scores - scores.max())
    softmax = e / e.sum()
    recorded = None
    if trace.dense:
        recorded = np.asarray(trace.attention(layer)[head, query], dtype=np.float64)
    return NeuronRow(layer, head, query, q, k, qk, scores, softmax, recorded, float(scale), causal)


def shown_keys(row: NeuronRow, max_keys: int | None = MAX_KEYS) -> np.ndarray:
    """Key indices to draw, in position order: all of them, or the `max_keys` with the most attention."""
    n = len(row.scores)
    if max_keys is None or n <= max_keys:
        return np.arange(n)
    weight = row.softmax + (row.recorded if row.recorded is not None else 0.0)  # heavy in either row
    top = np.argsort(-weight, kind="stable")[:max_keys]
    if row.query not in top:  # the query's own key stays in view
        top = np.append(top[: max_keys - 1], row.query)
    return np.sort(top)


def check_text(row: NeuronRow, variant: str = "full", native: str | None = None) -> str:
    """One line on whether the recomputed softmax matches the recorded probabilities; `native` is the layer's
    own pattern (models.pattern), which a plain softmax of q·k leaves out (a window, a soft cap, ALiBi, sinks)."""
    what = "softmax(q·k·scale" + (", causal)" if row.causal else ")")
    d = row.max_diff
    if d is None:
        return f"{what} recomputed; the trace kept no dense probabilities to compare with"
    if d <= ATOL:
        return f"{what} matches the recorded probabilities (max |Δ| = {d:.1e})"
    why = f"the variant {variant}"
    if native and native != "global":
        why = f"the model's own attention here ({native})" + ("" if variant == "full" else f" and {why}")
    return f"{what} differs from the recorded probabilities (max |Δ| = {d:.2g}): {why} changes them"


def neuron_figure(trace, layer: int, head: int, query: int, *, max_keys: int | None = MAX_KEYS,
                  scale: float | None = None) -> go.Figure:
    """One figure, the key axis shared: q_i above the keys k_j, q_i∘k_j, q_i·k_j·scale, softmax per key."""
    row = neuron_row(trace, layer, head, query, scale=scale)
    keys = shown_keys(row, max_keys)
    labels = token_labels(trace.tokens)
    ylab = [labels[j] for j in keys]
    d = row.q.shape[0]
    dims = np.arange(d)
    height = int(np.clip(180 + 18 * len(keys), 460, 1600))
    bar_y = -60 / (height - 210)  # colour bars 60 px under the plot area (margins: 100 top, 110 bottom)
    strip = 26 / (height - 210)  # q_i: one row about as tall as a key's
    fig = make_subplots(
        rows=2, cols=4, shared_yaxes=False, column_widths=[0.3, 0.3, 0.2, 0.2], row_heights=[strip, 1 - strip],
        horizontal_spacing=0.03, vertical_spacing=0.02,
        specs=[[{}, {}, None, None], [{}, {}, {}, {}]],
        # titles go to the six drawn cells in row-major order
        subplot_titles=(f"query q<sub>{query}</sub>", f"q<sub>{query}</sub> ∘ k<sub>j</sub> (sums to q·k)", "", "",
                        "q·k·scale", "softmax"),
    )
    qk_lim = float(np.abs(np.concatenate([row.q, row.k[keys].ravel()])).max()) or 1.0
    prod_lim = float(np.abs(row.qk[keys]).max()) or 1.0
    fig.add_trace(go.Heatmap(z=row.q[None, :], x=dims, y=[labels[query]], coloraxis="coloraxis",
                             hovertemplate="q[%{x}] = %{z:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=row.q[None, :], x=dims, y=[labels[query]], coloraxis="coloraxis",
                             hovertemplate="q[%{x}] = %{z:.3f}<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Heatmap(z=row.k[keys], x=dims, y=ylab, coloraxis="coloraxis",
                             hovertemplate="key %{y}<br>k[%{x}] = %{z:.3f}<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Heatmap(z=row.qk[keys], x=dims, y=ylab, coloraxis="coloraxis2",
                             hovertemplate="key %{y}<br>q∘k[%{x}] = %{z:.3f}<extra></extra>"), row=2, col=2)
    scores = row.scores[keys]
    visible = np.isfinite(scores)
    fig.add_trace(go.Bar(
        x=np.where(visible, scores, 0.0), y=ylab, orientation="h", name="q·k·scale", showlegend=False,
        marker_color=np.where(scores >= 0, "#d6604d", "#4393c3").tolist(),
        text=np.where(visible, "", "masked").tolist(), textposition="outside",
        hovertemplate="key %{y}<br>q·k·scale = %{x:.3f}<extra></extra>"), row=2, col=3)
    fig.add_trace(go.Bar(
        x=row.softmax[keys], y=ylab, orientation="h", name="softmax (recomputed)", marker_color="#35b779",
        hovertemplate="key %{y}<br>p = %{x:.4f}<extra>recomputed</extra>"), row=2, col=4)
    if row.recorded is not None:
        fig.add_trace(go.Scatter(
            x=row.recorded[keys], y=ylab, mode="markers", name="recorded", marker=dict(symbol="line-ns-open",
                                                                                    size=12, color="black"),
            hovertemplate="key %{y}<br>recorded p = %{x:.4f}<extra></extra>"), row=2, col=4)
    # the key axis: one category order, top to bottom in position order, shared by every panel
    for col in (1, 2, 3, 4):
        fig.update_yaxes(categoryorder="array", categoryarray=ylab, autorange="reversed", row=2, col=col,
                         matches="y3" if col > 1 else None, showticklabels=col == 1, tickmode="array", tickvals=ylab,
                         tickfont=dict(size=_tick(len(keys))))
    for col in (1, 2):
        fig.update_yaxes(showticklabels=col == 1, row=1, col=col)
        fig.update_xaxes(showticklabels=False, matches=f"x{col + 2}", row=1, col=col)
        fig.update_xaxes(title="k<sub>j</sub> by dimension" if col == 1 else "dimension", row=2, col=col)
    fig.update_xaxes(title="score", zeroline=True, zerolinecolor="#888", row=2, col=3)
    top_p = max(float(row.softmax[keys].max()), float(row.recorded[keys].max()) if row.recorded is not None else 0.0)
    fig.update_xaxes(title="p", range=[0, max(top_p, 1e-6) * 1.08], row=2, col=4)
    fig.update_layout(
        coloraxis=dict(colorscale=DIVERGING, cmid=0, cmin=-qk_lim, cmax=qk_lim,
                       colorbar=dict(title="q, k", orientation="h", x=0.15, y=bar_y, len=0.28, thickness=10,
                                     yanchor="top")),
        coloraxis2=dict(colorscale=DIVERGING, cmid=0, cmin=-prod_lim, cmax=prod_lim,
                        colorbar=dict(title="q∘k", orientation="h", x=0.46, y=bar_y, len=0.28, thickness=10,
                                      yanchor="top")),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"), bargap=0.15,
    )
    n_shown = len(keys)
    keys_note = f"{n_shown} keys" if n_shown == trace.n else f"top {n_shown} of {trace.n} keys"
    heading = title(trace, f"layer {layer} · head {head} · query {labels[query]} · {keys_note}")
    native = trace.native[layer] if trace.native else None
    fig.add_annotation(text=check_text(row, trace.variant, native), xref="paper", yref="paper", x=0, y=1.0,
                       yanchor="bottom", yshift=26, showarrow=False, font=dict(size=11, color="#555"),
                       xanchor="left")
    fig = finish(fig, heading, height=height, width=1200)
    fig.update_layout(margin=dict(t=100, b=110))
    fig.layout.meta = {"max_diff": row.max_diff, "keys": keys.tolist()}
    return fig


def _tick(n: int) -> int:
    return 12 if n <= 24 else 10 if n <= 48 else 8
