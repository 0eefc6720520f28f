"""Quality lens: what variants do to the model's task metric, against how much attention they drop."""

from __future__ import annotations

import streamlit as st

from app import session
from app.export_buttons import download_buttons
from app.views.quality_view import damage_heatmap, tradeoff_figure

st.header("Quality lens")
sel = session.selection()
st.caption("Runs the model over its task set (perplexity on a shipped text, masked tokens or the digits test "
           "split) under each variant; this takes a while on a CPU.")
specs = st.text_area("Variants, one per line (a|b|c expands a parameter grid)",
                     "full\nsliding_window:w=16|64,sinks=4\nsliding_window:w=16|64,sinks=0" if sel.kind != "vit"
                     else "full\nwindow_2d:M=2|4\nneighborhood_2d:k=1|2\ntopk:k=8|16|32", key="q_specs")
limit = st.number_input("Inputs (batches) to use", 1, 100, 4, key="q_limit")


@st.cache_data(show_spinner=False, max_entries=8)
def run_sweep(model_id: str, specs: tuple[str, ...], limit: int):
    from analysis.quality import sweep

    return sweep(session.get_model(model_id), list(specs), limit=limit)


if sel.model_id and st.button("Run the sweep", key="q_run"):
    st.session_state["q_request"] = (sel.model_id, tuple(s.strip() for s in specs.splitlines() if s.strip()),
                                     int(limit))
req = st.session_state.get("q_request")
if req is not None and req[0] == sel.model_id:
    try:
        with st.spinner("Sweeping…"):
            result = run_sweep(*req)
    except Exception as exc:
        session.show_error(exc)
        st.stop()
    rows = result.rows
    st.plotly_chart(tradeoff_figure(rows), key="q_curve")
    download_buttons(lambda: tradeoff_figure(rows), rows, "quality", selection={"model": sel.model_id})
    st.dataframe(rows, hide_index=True)
    names = [r["variant"] for r in rows]
    pick = st.selectbox("Per-head damage of", names, key="q_pick")
    heads = result.heads.get(pick)
    if heads is not None:
        st.plotly_chart(damage_heatmap(heads["kl"], model=sel.model_id, variant=pick), key="q_damage")
