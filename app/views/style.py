"""One figure style for every view: readable at column width, colour-blind-safe scales."""

from __future__ import annotations

import plotly.graph_objects as go

SEQUENTIAL = "Viridis"  # perceptually uniform and colour-blind safe
DIVERGING = "RdBu_r"
FONT = dict(family="Helvetica, Arial, sans-serif", size=13)


def title(trace, what: str) -> str:
    """'<model> · <variant> · <what>' — every figure names what it shows."""
    return f"{trace.model_id} · {trace.variant} · {what}"


def finish(fig: go.Figure, heading: str, *, width: int | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=heading, x=0.01, xanchor="left", font=dict(size=15)),
        font=FONT, template="plotly_white", margin=dict(l=70, r=30, t=60, b=60),
        width=width, height=height,
    )
    return fig
