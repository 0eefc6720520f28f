"""Head view: one layer's heads as token lines and as a heatmap; long inputs zoom into exact tiles."""

from __future__ import annotations

import streamlit as st

from analysis.tiles import MAX_TILE, tile
from app import session
from app.export_buttons import download_buttons
from app.views.head_view import MAX_LINES_N, head_heatmap, tile_heatmap, token_lines

st.header("Head view")
sel = session.selection()
tr = session.traced()
if tr is not None:
    layer, head = session.pick_layer_head(tr, page="head")
    if tr.dense:
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
                st.plotly_chart(token_lines(tr, layer, heads, focus=focus_i, threshold=threshold))
                download_buttons(lambda: token_lines(tr, layer, heads, focus=focus_i, threshold=threshold), tr, "lines")
            else:
                st.info(f"The lines view draws up to {MAX_LINES_N} tokens; this input has {tr.n}.")
        with heat:
            st.plotly_chart(head_heatmap(tr, layer, head), key="head_heat")
            download_buttons(None, tr, "head", selection={"layer": layer, "head": head})
    else:
        st.caption(f"{tr.n} tokens: the map below is pooled ({tr.pooled(0).shape[-1]}² tiles, each the "
                   "mean probability of its tokens). Pick a range to recompute it exactly from q, k and the LSE.")
        st.plotly_chart(head_heatmap(tr, layer, head), key="head_pooled")
        download_buttons(None, tr, "head", selection={"layer": layer, "head": head})
        side = min(MAX_TILE, 128)
        c1, c2 = st.columns(2)
        q0 = c1.number_input("Query rows from", 0, tr.n - 1, max(0, tr.n - side), key="tile_q0")
        k0 = c2.number_input("Key columns from", 0, tr.n - 1, max(0, tr.n - side), key="tile_k0")
        rows = (int(q0), min(tr.n, int(q0) + side))
        cols = (int(k0), min(tr.n, int(k0) + side))
        try:
            st.plotly_chart(tile_heatmap(tr, layer, head, rows, cols, tile(tr, layer, head, rows, cols)))
            download_buttons(lambda: tile_heatmap(tr, layer, head, rows, cols, tile(tr, layer, head, rows, cols)),
                             tr, "tile", selection={"layer": layer, "head": head, "rows": rows, "cols": cols})
        except ValueError as exc:
            st.error(str(exc))
