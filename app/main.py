"""Streamlit entry point (`attnscope app` / `make run`)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

st.set_page_config(page_title="attnscope", page_icon="🔬", layout="wide")
st.navigation([
    st.Page(PAGES / "model_view.py", title="Model view", default=True),
]).run()
