"""Head metrics: L × H maps of what each head does on this input, and the model's induction heads."""

from __future__ import annotations

import numpy as np
import streamlit as st

from analysis.head_metrics import METRICS, trace_head_metrics, why_no_previous_token
from app import session
from app.export_buttons import download_buttons
from app.views.quality_view import head_heatmap

st.header("Head metrics")
sel = session.selection()
tr = session.traced()


@st.cache_data(show_spinner=False, max_entries=8)
def induction_scores(model_id: str) -> np.ndarray:
    from analysis.head_types import head_scores

    return head_scores(session.get_model(model_id)).scores["induction"]


if tr is not None:
    metrics = session.memo(tr, "head_metrics", lambda: trace_head_metrics(tr))
    missing = why_no_previous_token(tr)
    if missing and tr.kind != "vit":
        st.caption(f"No previous-token score: {missing}.")
    cols = st.columns(2)
    for i, (name, values) in enumerate(metrics.items()):
        with cols[i % 2]:
            st.plotly_chart(head_heatmap(values, what=name, heading=f"{tr.model_id} · {tr.variant} · {METRICS[name]}",
                                         zmin=0 if name != "entropy" else None), key=f"hm_{name}")
            download_buttons(None, tr, "metrics", selection={"metric": name})
    if tr.kind != "vit":
        with st.spinner("Induction scores: a random sequence repeated twice…"):
            try:
                ind = induction_scores(sel.model_id)
            except Exception as exc:
                session.show_error(exc)
                ind = None
        if ind is not None:
            best = np.unravel_index(np.nanargmax(ind), ind.shape)
            st.plotly_chart(head_heatmap(ind, what="induction", zmax=1,
                                         heading=f"{tr.model_id} · induction score (full attention, "
                                                 "random tokens repeated twice)"), key="hm_induction")
            st.caption(f"Strongest induction head: layer {best[0]}, head {best[1]} ({ind[best]:.2f}).")
