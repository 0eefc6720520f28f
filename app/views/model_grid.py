"""Model view: every layer × head as a thumbnail heatmap in one figure; and the maps every view draws."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from app.views.style import SEQUENTIAL, finish, title

THUMB = 48  # thumbnails are block-averaged to at most THUMB × THUMB cells ...
GRID_CELLS = 2**19  # ... and to fewer for big models: one byte a cell, the grid stays under ~1 MB of JSON
LEVELS = 255  # a thumbnail's cells are 1..255 (its own maximum is 255; 0 is the gap between thumbnails)
DRAW_MAX = 512  # a map view draws at most this many rows and columns (float32: 1.4 MB of JSON per map)


def block_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Average an (..., N, M) map into (..., ≤size, ≤size) tiles (the rule of `tile_spans`; uneven when size ∤ N)."""
    rows, cols = tile_spans(a.shape[-2], min(size, a.shape[-2])), tile_spans(a.shape[-1], min(size, a.shape[-1]))
    sums = np.add.reduceat(np.add.reduceat(a, [c[0] for c in cols], axis=-1), [r[0] for r in rows], axis=-2)
    counts = np.outer([b - a for a, b in rows], [b - a for a, b in cols])
    return sums / counts.astype(sums.dtype)


def tile_spans(n: int, bins: int) -> list[tuple[int, int]]:
    """Token range [start, end) of each of `bins` tiles over n positions (position i is in tile ⌊i·bins/n⌋),
    the pooling rule of long traces (models/recorder.py) and of `block_mean`."""
    starts = -(-np.arange(bins + 1) * n // bins)  # ⌈t·n/bins⌉
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def layer_maps(trace, layer: int) -> np.ndarray:
    """(H, n, n) maps of one layer: dense probs, else the pooled maps."""
    return trace.attention_map(layer)


def drawn_exactly(trace, side: int = DRAW_MAX) -> bool:
    """Whether a map view draws one cell per query × key (else tiles of several tokens)."""
    return trace.dense and trace.n <= side


def display_maps(trace, layer: int, side: int = DRAW_MAX) -> tuple[np.ndarray, list[tuple[int, int]] | None]:
    """(H, R, R) float32 maps a view draws for one layer, R ≤ side, and each row's (= column's) token range;
    spans is None when every row is one token (a dense map drawn exactly)."""
    maps = layer_maps(trace, layer)
    if drawn_exactly(trace, side):
        return maps.astype(np.float32, copy=False), None
    if maps.shape[-1] > side:
        maps = block_mean(maps.astype(np.float32, copy=False), side)
    return maps.astype(np.float32, copy=False), tile_spans(trace.n, maps.shape[-1])


def thumb_side(trace, thumb: int = THUMB) -> int:
    """Thumbnail side: at most `thumb`, and small enough that the whole grid has at most GRID_CELLS cells."""
    fit = int(np.sqrt(GRID_CELLS / (trace.n_layers * trace.n_heads)))
    return max(4, min(thumb, fit))


def model_grid(trace, *, thumb: int = THUMB, gap: int = 2) -> go.Figure:
    """All heads of all layers; rows are layers, columns heads, each thumbnail scaled to its own maximum.

    An invisible marker sits on each thumbnail (customdata: layer, head) for hover and clicks."""
    L, H = trace.n_layers, trace.n_heads
    side = thumb_side(trace, thumb)
    thumbs = [block_mean(layer_maps(trace, layer).astype(np.float32, copy=False), side) for layer in range(L)]
    t = thumbs[0].shape[-1]
    step = t + gap
    canvas = np.zeros((L * step - gap, H * step - gap), dtype=np.uint8)
    for layer, maps in enumerate(thumbs):
        for head in range(H):
            r0, c0 = layer * step, head * step
            # each thumbnail is scaled to its own max so weak and sharp heads both stay visible; 255 levels are
            # as many as the colour scale has
            scaled = maps[head] / max(float(maps[head].max()), 1e-12)
            canvas[r0:r0 + t, c0:c0 + t] = 1 + np.rint(scaled * (LEVELS - 1)).astype(np.uint8)
    layers, heads = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    fig = go.Figure([
        go.Heatmap(z=canvas, x0=0, y0=0, colorscale=gapped(SEQUENTIAL), zmin=0, zmax=LEVELS, showscale=False,
                   hoverinfo="skip"),
        go.Scatter(x=(heads.ravel() * step + (t - 1) / 2).astype(np.float32),
                   y=(layers.ravel() * step + (t - 1) / 2).astype(np.float32),
                   customdata=np.stack([layers.ravel(), heads.ravel()], axis=-1).astype(np.int16),
                   mode="markers", marker=dict(size=max(6, min(40, 2 * t)), symbol="square", opacity=0),
                   hovertemplate="layer %{customdata[0]} · head %{customdata[1]}<extra></extra>", showlegend=False),
    ])
    centers = (np.arange(L) * step + (t - 1) / 2).tolist()
    # explicit ranges: the invisible markers must not pad the axes
    fig.update_yaxes(range=[canvas.shape[0] - 0.5, -0.5], tickvals=centers, ticktext=[f"L{i}" for i in range(L)],
                     tickfont=dict(size=11), showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    fig.update_xaxes(range=[-0.5, canvas.shape[1] - 0.5], tickvals=(np.arange(H) * step + (t - 1) / 2).tolist(),
                     ticktext=[f"H{h}" for h in range(H)], tickfont=dict(size=11), tickangle=0, side="top",
                     showgrid=False, zeroline=False, constrain="domain")
    fig.update_layout(hoverdistance=-1)  # a click anywhere picks the nearest thumbnail
    what = "pooled attention" if not trace.dense else "attention"
    cell = min(46, 360 / H)  # a thumbnail's size in pixels when the figure is drawn in a half-width column
    return finish(fig, title(trace, f"{what} of every head · {trace.n} tokens"),
                  height=int(max(300, 150 + L * cell)), width=max(420, 120 + H * 60))


def gapped(scale: str) -> list[list]:
    """A colour scale over 0..LEVELS whose 0 is transparent (the gaps) and 1..LEVELS run through `scale`."""
    from plotly.colors import get_colorscale

    first = 1 / LEVELS
    stops = [[first + (1 - first) * pos, colour] for pos, colour in get_colorscale(scale)]
    return [[0, "rgba(0,0,0,0)"], [0.5 / LEVELS, "rgba(0,0,0,0)"], *stops]


def cell_at(fig_point: dict) -> tuple[int, int] | None:
    """(layer, head) of a clicked point of `model_grid`, None for anything else."""
    data = (fig_point or {}).get("customdata")
    if not isinstance(data, list | tuple) or len(data) != 2:
        return None
    return int(data[0]), int(data[1])
