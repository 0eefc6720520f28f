"""One figure style for every view: readable at column width, colour-blind-safe scales, titles that fit."""

from __future__ import annotations

import re

import plotly.graph_objects as go

SEQUENTIAL = "Viridis"  # perceptually uniform and colour-blind safe
DIVERGING = "RdBu_r"
FONT = dict(family="Helvetica, Arial, sans-serif", size=14)
TITLE_SIZE = 16
MIN_TITLE_SIZE = 12
DEFAULT_WIDTH = 700  # what plotly (and the static export) draws when a figure sets no width
TITLE_FIT = 460  # titles fit this width: the app stretches figures to their column, half of a 1400-px window
CHAR_EM = 0.56  # mean advance of a Helvetica character, in em: enough to tell whether a title fits
SEP = " · "


def title(trace, what: str) -> str:
    """'<model> · <variant> · <what>' — every figure names what it shows."""
    return f"{trace.model_id}{SEP}{trace.variant}{SEP}{what}"


def finish(fig: go.Figure, heading: str, *, width: int | None = None, height: int | None = None) -> go.Figure:
    """The shared layout: font, white template, margins; a title that fits the width; no clipped tick labels."""
    text, size, lines = fit_title(heading, width)
    fig.update_layout(
        title=dict(text=text, x=0.01, xanchor="left", font=dict(size=size)),
        font=FONT, template="plotly_white", margin=dict(l=70, r=30, t=60 + 20 * (lines - 1), b=60),
        width=width, height=height,
    )
    # long token labels push the margins out instead of being cut off at the figure's edge
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _text_px(text: str, size: float) -> float:
    return len(re.sub(r"<[^>]+>", "", text)) * size * CHAR_EM


def fit_title(heading: str, width: int | None) -> tuple[str, int, int]:
    """(text, font size, lines): shrink the title down to MIN_TITLE_SIZE, then wrap it at ' · ' separators.

    A break never falls between 'layer N' and 'head M', so the title keeps saying 'layer N · head M'.
    """
    avail = min(width or DEFAULT_WIDTH, TITLE_FIT) - 40
    size = TITLE_SIZE
    while size > MIN_TITLE_SIZE and _text_px(heading, size) > avail:
        size -= 1
    if _text_px(heading, size) <= avail or "<br>" in heading:
        return heading, size, heading.count("<br>") + 1
    parts = heading.split(SEP)
    units: list[str] = []  # pieces a line break may fall between
    for part in parts:
        if units and units[-1].split(SEP)[-1].startswith("layer ") and part.startswith("head "):
            units[-1] += SEP + part
        else:
            units.append(part)
    lines = [units[0]]
    for unit in units[1:]:
        if _text_px(lines[-1] + SEP + unit, size) <= avail:
            lines[-1] += SEP + unit
        else:
            lines[-1] += " ·"
            lines.append(unit)
    return "<br>".join(lines), size, len(lines)
