"""Streamlit entry point (`attnscope app` / `make run`): the shared sidebar, then the chosen page."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import session

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="attnscope", page_icon=":material/biotech:", layout="wide")
page = st.navigation([
    st.Page(PAGES / "model_view.py", title="Model view", icon=":material/grid_view:", default=True),
    st.Page(PAGES / "head_view.py", title="Head view", icon=":material/timeline:"),
    st.Page(PAGES / "neuron_view.py", title="Neuron view", icon=":material/scatter_plot:"),
    st.Page(PAGES / "image_view.py", title="Image view", icon=":material/image:"),
    st.Page(PAGES / "mask_lab.py", title="Mask lab", icon=":material/science:"),
    st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare:"),
    st.Page(PAGES / "head_metrics.py", title="Head metrics", icon=":material/bar_chart:"),
    st.Page(PAGES / "qk_explorer.py", title="Query–key explorer", icon=":material/bubble_chart:"),
    st.Page(PAGES / "quality.py", title="Quality lens", icon=":material/show_chart:"),
])
st.session_state["selection"] = session.sidebar()
page.run()
