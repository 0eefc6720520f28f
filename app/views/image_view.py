"""Image view (ViT): a query's attention over the patch grid, overlaid on the pixels the model saw.

The query is the CLS token or one patch. Its attention row over the patch tokens is reshaped
to the grid and drawn, one cell per patch (over that patch's pixels), as a heatmap over
`trace.image` (opaque by default, so its colours are the colour bar's), next to the image
alone: per head as small multiples plus the head mean, or the mean alone.
The rollout map (analysis.rollout) is drawn the same way. A chosen query patch is outlined.
Colour is the raw probability (not renormalised over the patches): what the query puts on
special tokens (CLS itself, registers) is named in each panel's title.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.rollout import RESIDUAL, grid_rollout, patch_tokens, to_grid
from app.views.style import SEQUENTIAL, finish, title

OPACITY = 1.0  # the overlay's colours are the colour bar's; lower it to see the pixels through them
Query = int | tuple[int, int] | str  # "cls", a (row, col) patch, or a token index


def query_token(trace, query: Query = "cls") -> int:
    """Token index of `query`: "cls" (the first special token), a (row, col) patch, or a token index."""
    patches = patch_tokens(trace)
    if isinstance(query, str):
        if query.lower() != "cls":
            raise ValueError(f"query must be 'cls', a (row, col) patch or a token index, not {query!r}")
        special = np.flatnonzero(np.asarray(trace.special, dtype=bool))
        if not len(special):
            raise ValueError(f"{trace.model_id} has no CLS token; pick a patch as the query")
        return int(special[0])
    if isinstance(query, tuple | list):
        rows, cols = trace.grid
        r, c = (int(v) for v in query)
        if not (0 <= r < rows and 0 <= c < cols):
            raise ValueError(f"patch ({r}, {c}) is outside the {rows}×{cols} grid")
        return int(patches[r * cols + c])
    if not 0 <= int(query) < trace.n:
        raise ValueError(f"query token {query} does not exist; the trace has tokens 0..{trace.n - 1}")
    return int(query)


def query_patch(trace, query: Query) -> tuple[int, int] | None:
    """(row, col) of the query when it is a patch, None for a special token."""
    tok = query_token(trace, query)
    hit = np.flatnonzero(patch_tokens(trace) == tok)
    if not len(hit):
        return None
    return divmod(int(hit[0]), trace.grid[1])


def attention_grid(trace, layer: int, query: Query = "cls") -> np.ndarray:
    """(H, rows, cols): every head's attention from the query to each patch."""
    if not 0 <= layer < trace.n_layers:
        raise ValueError(f"layer {layer} does not exist; the trace has layers 0..{trace.n_layers - 1}")
    return to_grid(trace, trace.attention(layer)[:, query_token(trace, query)])


def special_mass(trace, layer: int, query: Query = "cls") -> np.ndarray:
    """(H,) attention from the query to special tokens (CLS, registers): what the patch maps leave out."""
    special = np.asarray(trace.special, dtype=bool)
    return trace.attention(layer)[:, query_token(trace, query)][:, special].sum(axis=-1)


def patch_edges(size: int, cells: int) -> np.ndarray:
    """Pixel edges (cells + 1) of the patches along one axis: pixel i belongs to patch ⌊i·cells/size⌋."""
    return -(-np.arange(cells + 1) * size // cells) - 0.5


def patch_box(trace, patch: tuple[int, int]) -> dict:
    """Pixel rectangle (x0, x1, y0, y1) of a patch in image coordinates (pixel centres at integers)."""
    rows, cols = trace.grid
    h, w = _image(trace).shape[:2]
    r, c = patch
    ys, xs = patch_edges(h, rows), patch_edges(w, cols)
    return dict(x0=float(xs[c]), x1=float(xs[c + 1]), y0=float(ys[r]), y1=float(ys[r + 1]))


def cell_at(trace, x: float, y: float) -> tuple[int, int]:
    """(row, col) of the patch under pixel (x, y): a click on an overlay picks that patch."""
    rows, cols = trace.grid
    h, w = _image(trace).shape[:2]
    yi = int(np.clip(round(y), 0, h - 1))
    xi = int(np.clip(round(x), 0, w - 1))
    return (yi * rows) // h, (xi * cols) // w


def overlay_figure(trace, maps: np.ndarray, names: list[str], heading: str, *, query: Query | None = None,
                   opacity: float = OPACITY, cols: int = 6, shared_scale: bool = True,
                   colorbar_title: str = "p") -> go.Figure:
    """Small multiples: the image alone, then each (rows, cols) map laid over it, one cell per patch (over that
    patch's pixels, so the figure does not grow with the image); the query patch outlined.

    At opacity 1 (the default) every colour is exactly the colour bar's; below 1 the pixels show through and
    mix with it. customdata is each cell's (row, col), for clicks.
    """
    image = _image(trace)
    h, w = image.shape[:2]
    rows, grid_cols = trace.grid
    maps = np.asarray(maps, dtype=np.float32).reshape(-1, rows, grid_cols)
    n = len(maps) + 1  # the image alone comes first
    ncols = -(-n // -(-n // cols))  # rows of (almost) equal length: 5 panels in one row, 13 as 5 + 5 + 3
    nrows = -(-n // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=["the image", *names], horizontal_spacing=0.02,
                        vertical_spacing=0.08 if nrows > 1 else 0.0)
    zmax = float(maps.max()) if shared_scale else None
    where = np.stack(np.meshgrid(np.arange(rows), np.arange(grid_cols), indexing="ij"), axis=-1).astype(np.int16)
    patch = query_patch(trace, query) if query is not None else None
    fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=1)
    for i, grid_map in enumerate(maps):
        r, c = divmod(i + 1, ncols)
        r, c = r + 1, c + 1
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=r, col=c)
        fig.add_trace(go.Heatmap(
            z=grid_map, x=patch_edges(w, grid_cols), y=patch_edges(h, rows), customdata=where, colorscale=SEQUENTIAL,
            opacity=opacity, zmin=0, zmax=zmax if shared_scale else float(grid_map.max()) or 1.0,
            showscale=(i == 0) if shared_scale else False, name=names[i],
            colorbar=dict(title=colorbar_title, thickness=12),
            hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<br>%{z:.4f}<extra>" + names[i] + "</extra>",
        ), row=r, col=c)
        if patch is not None:
            fig.add_shape(type="rect", **patch_box(trace, patch), line=dict(color="#ff1f5b", width=2.5),
                          row=r, col=c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, range=[h - 0.5, -0.5])
    for i in range(n):  # every panel keeps the image's aspect ratio
        r, c = divmod(i, ncols)
        fig.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=r + 1, col=c + 1)
    fig.update_annotations(font_size=11)  # panel titles: six to a row still fit a half-page column
    panel = 260 if ncols > 1 else 520
    return finish(fig, heading, width=min(1200, 60 + ncols * panel), height=110 + nrows * (panel + 30))


def attention_overlay(trace, layer: int, query: Query = "cls", *, per_head: bool = True,
                      heads: list[int] | None = None, opacity: float = OPACITY) -> go.Figure:
    """The query's attention over the patches on the image: each head and their mean, or the mean alone."""
    grid = attention_grid(trace, layer, query)
    mass = special_mass(trace, layer, query)
    heads = list(range(trace.n_heads)) if heads is None else list(heads)
    mean = grid[heads].mean(axis=0)
    name = _query_name(trace, query)
    if per_head:
        maps = np.concatenate([grid[heads], mean[None]])
        names = [f"head {h} · special {mass[h]:.2f}" for h in heads] + [f"mean · special {mass[heads].mean():.2f}"]
    else:
        maps, names = mean[None], [f"mean of {len(heads)} heads · on special tokens {mass[heads].mean():.2f}"]
    return overlay_figure(trace, maps, names, title(trace, f"layer {layer} · attention of {name} over the patches"),
                          query=query, opacity=opacity)


def rollout_overlay(trace, query: Query = "cls", *, residual: float = RESIDUAL, reduce: str | Callable = "mean",
                    opacity: float = OPACITY) -> go.Figure:
    """Attention rollout (all layers, residual added, rows renormalised) of the query over the patches."""
    grid = grid_rollout(trace, query_token(trace, query), residual=residual, reduce=reduce)
    name = _query_name(trace, query)
    how = reduce if isinstance(reduce, str) else getattr(reduce, "__name__", "custom")
    return overlay_figure(
        trace, grid[None], [f"rollout of {name} · {how} over heads · residual {residual:g}"],
        title(trace, f"attention rollout through {trace.n_layers} layers"), query=query, opacity=opacity,
        colorbar_title="flow")


def _query_name(trace, query: Query) -> str:
    patch = query_patch(trace, query)
    return trace.tokens[query_token(trace, query)] if patch is None else f"patch {patch}"


def _image(trace) -> np.ndarray:
    if trace.image is None:
        raise ValueError(f"this trace of {trace.model_id} kept no image; trace an image with a vision model")
    image = np.asarray(trace.image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image
