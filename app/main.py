"""Streamlit entry point (`attnscope app` / `make run`): the shared sidebar, then the chosen page."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import session

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="attnscope", page_icon="🔬", layout="wide")
page = st.navigation([
    st.Page(PAGES / "model_view.py", title="Model view", icon="🧩", default=True),
    st.Page(PAGES / "head_view.py", title="Head view", icon="🔍"),
    st.Page(PAGES / "neuron_view.py", title="Neuron view", icon="🧬"),
    st.Page(PAGES / "image_view.py", title="Image view", icon="🖼️"),
    st.Page(PAGES / "mask_lab.py", title="Mask lab", icon="🧪"),
    st.Page(PAGES / "compare.py", title="Compare", icon="⚖️"),
    st.Page(PAGES / "head_metrics.py", title="Head metrics", icon="📊"),
    st.Page(PAGES / "qk_explorer.py", title="Query–key explorer", icon="✨"),
    st.Page(PAGES / "quality.py", title="Quality lens", icon="📉"),
])
st.session_state["selection"] = session.sidebar()
page.run()
