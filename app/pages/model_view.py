"""Model view: every layer × head at once; click one to open it here and in the other pages."""

from __future__ import annotations

import streamlit as st

from analysis.compare import prediction
from app import session
from app.export_buttons import download_buttons
from app.plot_events import plot_events
from app.views.head_view import head_heatmap
from app.views.model_grid import cell_at, model_grid

st.header("Model view")
sel = session.selection()
tr = session.traced()
if tr is not None:
    for note in tr.notes:
        st.caption(note)
    native = session.native_pattern(tr)
    if native:
        st.caption(f"The model's own attention: {native}.")
    said = prediction(tr, session.token_names(sel.model_id))
    if said:
        st.caption(said)
    left, right = st.columns([1, 1])
    with left:
        grid = session.memo(tr, "model_grid", lambda: model_grid(tr))
        st.plotly_chart(grid, key="grid")
        picked = cell_at(plot_events("grid").click)
        if picked is not None:
            session.select(*picked, page="model")
        download_buttons(None, tr, "model")
        st.caption("Each thumbnail is scaled to its own maximum. Click one to pick its head; the Head view, "
                   "Neuron view and Compare pages open on the same layer and head.")
    with right:
        layer, head = session.pick_layer_head(tr, page="model")
        st.plotly_chart(head_heatmap(tr, layer, head), key="head_map")
        download_buttons(None, tr, "head", selection={"layer": layer, "head": head}, key="model_head")
