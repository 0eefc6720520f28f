"""Model view page: the layer × head grid, and one head's heatmap."""

from __future__ import annotations

import streamlit as st

from app import session
from app.views.head_view import head_heatmap
from app.views.model_grid import cell_at, model_grid

sel = session.sidebar()
tr = session.traced(sel)
if tr is not None:
    for note in tr.notes:
        st.caption(note)
    st.session_state.setdefault("layer", 0)
    st.session_state.setdefault("head", 0)
    left, right = st.columns([1, 1])
    with left:
        st.subheader("Every head")
        event = st.plotly_chart(model_grid(tr), on_select="rerun", selection_mode="points", key="grid")
        points = (event or {}).get("selection", {}).get("points", []) if event else []
        picked = cell_at(points[0]) if points else None
        if picked is not None:
            st.session_state.layer, st.session_state.head = picked
    with right:
        st.subheader("One head")
        c1, c2 = st.columns(2)
        layer = c1.number_input("Layer", 0, tr.n_layers - 1, key="layer")
        head = c2.number_input("Head", 0, tr.n_heads - 1, key="head")
        st.plotly_chart(head_heatmap(tr, int(layer), int(head)), key="head_map")
