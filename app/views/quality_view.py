"""Quality lens views: trade-off curves, per-head damage, head-type maps. Pure: data in, Figure out.

`rows` are the table of analysis.quality.sweep (SweepResult.rows or the JSON of `attnscope sweep`);
per-head arrays are (L, H).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.style import SEQUENTIAL, finish

# Okabe–Ito: distinguishable with every common colour-vision deficiency
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "cross", "triangle-down", "star")
LABELS = {"sparsity": "fraction of scores kept", "attn_kl": "attention KL(full ‖ variant)",
          "attn_mass_lost": "attention mass lost", "output_kl": "output KL(full ‖ variant)",
          "top1_agreement": "top-1 agreement with full", "perplexity": "perplexity",
          "accuracy": "accuracy", "masked_accuracy": "masked-token accuracy",
          "embedding_cosine": "embedding cosine (full vs variant)"}


def curve_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Lines of a trade-off plot: per variant name, the parameter with the most distinct values
    runs along the line and every other varying parameter splits lines (e.g. `sinks=0`, `sinks=4`)."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    groups: dict[str, list[dict]] = {}
    for name, members in by_name.items():
        keys = list(members[0]["params"])
        distinct = {k: len({repr(m["params"].get(k)) for m in members}) for k in keys}
        along = max(keys, key=lambda k: distinct[k]) if keys else None
        split = [k for k in keys if k != along and distinct[k] > 1]
        for m in members:
            label = name + "".join(f" {k}={m['params'].get(k)}" for k in split)
            groups.setdefault(label, []).append(m)
    return groups


def tradeoff_figure(rows: list[dict], *, y: str = "value", x: str = "sparsity", log_y: bool | None = None,
                    heading: str | None = None) -> go.Figure:
    """Metric (`value`, or any numeric column) against the fraction of scores kept (`sparsity` in the rows),
    one line per variant family;
    `full` as a dashed horizontal reference."""
    metric = rows[0]["metric"] if rows else None
    y_name = metric if y == "value" else y
    fig = go.Figure()
    full = [r for r in rows if r["name"] == "full" and r.get(y) is not None]
    curves = curve_groups([r for r in rows if r["name"] != "full"])
    for i, (label, members) in enumerate(curves.items()):
        pts = sorted((m for m in members if m.get(x) is not None and m.get(y) is not None), key=lambda m: m[x])
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[m[x] for m in pts], y=[m[y] for m in pts], mode="lines+markers", name=label,
            line=dict(color=PALETTE[i % len(PALETTE)], width=2),
            marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=9), text=[m["variant"] for m in pts],
            hovertemplate="%{text}<br>" + f"{x} = %{{x:.3f}}<br>{y_name} = %{{y:.4g}}<extra></extra>",
        ))
    if full:
        fig.add_hline(y=full[0][y], line=dict(color="#555555", dash="dash"),
                      annotation_text=f"full: {full[0][y]:.4g}", annotation_position="top left")
    if log_y is None:
        vals = [r[y] for r in rows if isinstance(r.get(y), (int, float)) and r[y] > 0]
        log_y = y_name == "perplexity" and bool(vals) and max(vals) / min(vals) > 20
    fig.update_xaxes(title=LABELS.get(x, x), range=[0, 1.02] if x == "sparsity" else None)
    fig.update_yaxes(title=LABELS.get(y_name, y_name), type="log" if log_y else None)
    model = rows[0]["model"] if rows else ""
    fig.update_layout(legend=dict(title="variant"))
    return finish(fig, heading or f"{model} · {LABELS.get(y_name, y_name)} against the fraction of scores kept",
                  width=760, height=480)


def head_heatmap(values: np.ndarray, *, what: str, heading: str, colorscale: str = SEQUENTIAL,
                 zmin: float | None = 0.0, zmax: float | None = None) -> go.Figure:
    """An (L, H) array as a layers × heads heatmap."""
    a = np.asarray(values, dtype=float)
    L, H = a.shape
    fig = go.Figure(go.Heatmap(
        z=a, x=[f"H{h}" for h in range(H)], y=[f"L{i}" for i in range(L)], colorscale=colorscale,
        zmin=zmin, zmax=zmax, colorbar=dict(title=what, thickness=12),
        hovertemplate="layer %{y} · head %{x}<br>" + what + " = %{z:.4g}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_xaxes(title="head")  # at the bottom: on top its title would collide with the figure's
    return finish(fig, heading, width=max(420, 160 + 48 * H), height=max(320, 110 + 22 * L))


def damage_heatmap(kl: np.ndarray, *, model: str, variant: str) -> go.Figure:
    """Per-head attention KL(full ‖ variant) of one sweep point."""
    return head_heatmap(kl, what="KL", heading=f"{model} · {variant} · attention KL(full ‖ variant) per head")


def head_type_heatmaps(scores: dict[str, np.ndarray], *, model: str) -> go.Figure:
    """One L × H panel per head score (previous_token, induction, sink, distance), all on [0, 1]."""
    names = [n for n, a in scores.items() if not np.isnan(np.asarray(a, dtype=float)).all()]
    L, H = np.asarray(scores[names[0]]).shape if names else (1, 1)
    fig = make_subplots(rows=1, cols=max(len(names), 1), subplot_titles=[n.replace("_", " ") for n in names],
                        shared_yaxes=True, horizontal_spacing=0.04)
    for i, name in enumerate(names, start=1):
        fig.add_trace(go.Heatmap(
            z=np.asarray(scores[name], dtype=float), x=[f"H{h}" for h in range(H)], y=[f"L{j}" for j in range(L)],
            colorscale=SEQUENTIAL, zmin=0, zmax=1, showscale=i == len(names), colorbar=dict(title="score"),
            hovertemplate=f"{name}<br>layer %{{y}} · head %{{x}}<br>score = %{{z:.3f}}<extra></extra>",
        ), row=1, col=i)
    fig.update_yaxes(autorange="reversed")
    return finish(fig, f"{model} · head types (scores per layer × head)",
                  width=max(520, 140 + len(names) * (60 + 30 * H)), height=max(340, 120 + 22 * L))
