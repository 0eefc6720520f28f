"""Image view (ViT): a query's attention over the patches laid on the image, per head or averaged; rollout."""

from __future__ import annotations

import streamlit as st

from analysis.compare import prediction
from analysis.rollout import REDUCTIONS, RESIDUAL
from app import session
from app.export_buttons import download_buttons
from app.plot_events import plot_events
from app.views.image_view import OPACITY, attention_overlay, cell_at, rollout_overlay

CHARTS = ("image_attn", "image_rollout")


def clicked(tr) -> tuple[int, int] | None:
    """The patch of a new click on either overlay, read before the widgets it sets exist."""
    picked = None
    for key in CHARTS:  # every chart's events are read (each is one component), the first click wins
        p = plot_events(key).click
        if p is None or picked is not None:
            continue
        data = p.get("customdata")
        if isinstance(data, list) and len(data) == 2:
            picked = int(data[0]), int(data[1])
        elif isinstance(p.get("x"), int | float) and isinstance(p.get("y"), int | float):
            picked = cell_at(tr, p["x"], p["y"])
    return picked


st.header("Image view")
sel = session.selection()
if sel.kind is not None and sel.kind != "vit":
    st.info("The image view needs a vision model; pick digits-vit in the sidebar.")
    st.stop()
tr = session.traced()
if tr is None:
    st.stop()
rows, cols = tr.grid
picked = clicked(tr)
if picked is not None:
    st.session_state.image_query, (st.session_state.image_row, st.session_state.image_col) = "patch", picked
for key, top in (("image_row", rows - 1), ("image_col", cols - 1), ("image_layer", tr.n_layers - 1)):
    if st.session_state.get(key, 0) > top:  # another model since the last visit
        del st.session_state[key]
queries = ["CLS", "patch"] if any(tr.special) else ["patch"]
if st.session_state.get("image_query", queries[0]) not in queries:
    del st.session_state["image_query"]
defaults = {"image_layer": session.layer_head(tr)[0], "image_row": rows // 2, "image_col": cols // 2}
for key, value in defaults.items():  # set here, not as widget defaults: a click on a map also sets them
    st.session_state.setdefault(key, value)

c1, c2, c3, c4 = st.columns([1, 1, 2, 1])
layer = int(c1.number_input("Layer", 0, tr.n_layers - 1, key="image_layer"))
st.session_state["sel_layer"] = layer
kind = c2.radio("Query", queries, horizontal=True, key="image_query",
                help="click a patch in either map to make it the query")
row = c3.slider("Patch row", 0, rows - 1, key="image_row", disabled=kind != "patch")
col = c3.slider("Patch column", 0, cols - 1, key="image_col", disabled=kind != "patch")
per_head = c4.radio("Heads", ["each head", "mean"], key="image_mode") == "each head"
opacity = c4.slider("Overlay opacity", 0.0, 1.0, OPACITY, 0.05, key="image_opacity",
                    help="below 1 the pixels show through and mix with the colours; the colour bar shows them unmixed")
query = "cls" if kind == "CLS" else (int(row), int(col))

try:
    fig = attention_overlay(tr, layer, query, per_head=per_head, opacity=opacity)
except ValueError as exc:  # phrased for the user (app.views.image_view)
    st.error(str(exc))
    st.stop()
said = prediction(tr)
if said:
    st.caption(said)
st.plotly_chart(fig, key="image_attn")
st.download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True), f"image_L{layer}.html")
download_buttons(fig, tr, "image", selection={"layer": layer, "query": query, "per_head": per_head, "opacity": opacity})

st.subheader("Attention rollout")
st.caption("Abnar & Zuidema (2020): each layer's attention, reduced over heads, plus the identity for the residual "
           "stream (Â = (1 − w)·A + w·I), rows renormalised, multiplied through every layer; the query's row over "
           "the patches.")
r1, r2 = st.columns(2)
residual = r1.slider("Residual weight w", 0.0, 1.0, RESIDUAL, 0.05, key="image_residual",
                     help="0.5 is the paper's 0.5·A + 0.5·I; 0 multiplies the raw attention maps")
reduce = r2.selectbox("Heads reduced by", list(REDUCTIONS), key="image_reduce")
try:
    st.plotly_chart(rollout_overlay(tr, query, residual=residual, reduce=reduce, opacity=opacity),
                    key="image_rollout")
    download_buttons(None, tr, "image", selection={"mode": "rollout", "query": query, "residual": residual,
                                                   "reduce": reduce, "opacity": opacity}, key="image_rollout")
except ValueError as exc:
    st.error(str(exc))
