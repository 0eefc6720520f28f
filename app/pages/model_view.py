"""Model view: every layer × head at once; pick one to open it in the head view."""

from __future__ import annotations

import streamlit as st

from app import session
from app.export_buttons import download_buttons
from app.views.head_view import head_heatmap
from app.views.model_grid import cell_at, model_grid

st.header("Model view")
tr = session.traced()
if tr is not None:
    for note in tr.notes:
        st.caption(note)
    left, right = st.columns([1, 1])
    with left:
        grid = session.memo(tr, "model_grid", lambda: model_grid(tr))
        event = st.plotly_chart(grid, on_select="rerun", selection_mode="points", key="grid")
        download_buttons(None, tr, "model")
        points = event.get("selection", {}).get("points", []) if event else []
        picked = cell_at(points[0]) if points else None
        if picked is not None:
            session.select(*picked, page="model")
        st.caption("Click a thumbnail to pick its head; the Head view page opens the same head.")
    with right:
        layer, head = session.pick_layer_head(tr, page="model")
        st.plotly_chart(head_heatmap(tr, layer, head), key="head_map")
        download_buttons(None, tr, "head", selection={"layer": layer, "head": head}, key="model_head")
        st.caption("The Head view, Neuron view and Compare pages open on the same layer and head.")
