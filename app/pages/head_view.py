"""Head view: one layer's heads as token lines and as a heatmap; long inputs zoom into exact tiles."""

from __future__ import annotations

import streamlit as st

from analysis.tiles import MAX_TILE, tile
from app import session
from app.export_buttons import download_buttons
from app.plot_events import plot_events
from app.views.head_view import MAX_LINES_N, head_heatmap, region, tile_heatmap, token_lines
from app.views.model_grid import display_maps, drawn_exactly

MIN_TILE = 32  # a click on a small tile opens at least this many tokens around it


def lines_and_map(tr, layer: int, head: int) -> None:
    lines, heat = st.columns([1, 1])
    with lines:
        if tr.n <= MAX_LINES_N:
            extra = st.multiselect("Overlay other heads", [h for h in range(tr.n_heads) if h != head],
                                   key="head_lines")
            heads = sorted({head, *extra})
            options = ["every query", *[f"{i}: {t}" for i, t in enumerate(tr.tokens)]]
            focus = st.selectbox("Highlight one query's lines", options, key="head_focus")
            threshold = st.slider("Hide weights below", 0.0, 0.5, 0.02, 0.01, key="head_threshold")
            focus_i = None if focus == options[0] else int(focus.split(":")[0])
            st.plotly_chart(token_lines(tr, layer, heads, focus=focus_i, threshold=threshold), key="head_lines_fig")
            download_buttons(lambda: token_lines(tr, layer, heads, focus=focus_i, threshold=threshold), tr, "lines",
                             selection={"layer": layer, "head": "+".join(map(str, heads)), "query": focus_i})
        else:
            st.info(f"The lines view draws up to {MAX_LINES_N} tokens; this input has {tr.n}.")
    with heat:
        st.plotly_chart(head_heatmap(tr, layer, head), key="head_heat")
        download_buttons(None, tr, "head", selection={"layer": layer, "head": head})


def _set_tile(rows: tuple[int, int], cols: tuple[int, int]) -> None:
    """Make (rows, cols) the exact tile shown; call before the tile's inputs are drawn."""
    st.session_state.tile_q0, st.session_state.tile_q1 = rows[0], rows[1] - 1
    st.session_state.tile_k0, st.session_state.tile_k1 = cols[0], cols[1] - 1


def _widen(span: tuple[int, int], n: int) -> tuple[int, int]:
    """A span of at least MIN_TILE tokens around `span`, inside 0..n."""
    a, b = span
    if b - a >= MIN_TILE:
        return a, b
    a = max(0, min((a + b) // 2 - MIN_TILE // 2, n - MIN_TILE))
    return a, min(n, a + MIN_TILE)


def pooled_and_tile(tr, layer: int, head: int) -> None:
    _, spans = session.memo(tr, f"display:{layer}", lambda: display_maps(tr, layer))
    per = tr.n / len(spans)
    st.caption(f"{tr.n} tokens: each cell of the map is a tile of about {per:.3g} × {per:.3g} tokens (their mean "
               "attention). Click a tile, or drag a box to zoom into a region: its exact attention opens below, "
               "recomputed from q, k and the log-sum-exp of each row.")
    st.plotly_chart(head_heatmap(tr, layer, head), key="head_pooled")
    ev = plot_events("head_pooled")
    if ev.click is not None and isinstance(ev.click.get("index"), list):
        row, col = ev.click["index"]
        _set_tile(_widen(spans[row], tr.n), _widen(spans[col], tr.n))
    elif ev.zoom is not None:
        _set_tile(region(spans, tr.n, *ev.zoom["y"]), region(spans, tr.n, *ev.zoom["x"]))
    download_buttons(None, tr, "head", selection={"layer": layer, "head": head})

    side = 128
    starts = {"tile_q0": tr.n - side, "tile_q1": tr.n - 1, "tile_k0": tr.n - side, "tile_k1": tr.n - 1}
    for key, value in starts.items():
        if key not in st.session_state or st.session_state[key] >= tr.n:  # first visit, or a shorter input
            st.session_state[key] = max(0, value)
    c1, c2, c3, c4 = st.columns(4)
    q0 = int(c1.number_input("Queries from", 0, tr.n - 1, key="tile_q0"))
    q1 = int(c2.number_input("to", 0, tr.n - 1, key="tile_q1"))
    k0 = int(c3.number_input("Keys from", 0, tr.n - 1, key="tile_k0"))
    k1 = int(c4.number_input("to", 0, tr.n - 1, key="tile_k1"))
    rows, cols = (q0, max(q0, q1) + 1), (k0, max(k0, k1) + 1)
    if rows[1] - rows[0] > MAX_TILE or cols[1] - cols[0] > MAX_TILE:
        st.caption(f"The region is {rows[1] - rows[0]} × {cols[1] - cols[0]} tokens; the exact tile shows its first "
                   f"{MAX_TILE} rows and columns. Zoom in further for the rest.")
        rows, cols = (rows[0], min(rows[1], rows[0] + MAX_TILE)), (cols[0], min(cols[1], cols[0] + MAX_TILE))
    try:
        probs = tile(tr, layer, head, rows, cols)
    except ValueError as exc:  # phrased for the user (analysis.tiles)
        st.error(str(exc))
        return
    st.plotly_chart(tile_heatmap(tr, layer, head, rows, cols, probs), key="head_tile")
    download_buttons(lambda: tile_heatmap(tr, layer, head, rows, cols, tile(tr, layer, head, rows, cols)),
                     tr, "tile", selection={"layer": layer, "head": head, "rows": rows, "cols": cols})


st.header("Head view")
tr = session.traced()
if tr is not None:
    layer, head = session.pick_layer_head(tr, page="head")
    if drawn_exactly(tr):
        lines_and_map(tr, layer, head)
    else:
        pooled_and_tile(tr, layer, head)
