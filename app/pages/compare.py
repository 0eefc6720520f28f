"""Compare: two variants on one input, side by side, with what changed in attention and in the output."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from analysis.compare import compare
from app import session
from app.export_buttons import download_buttons
from app.views.compare_view import METRICS, output_figure, per_head, side_by_side

st.header("Compare")
sel = session.selection()
c1, c2 = st.columns(2)
with c1:
    a_spec = session.variant_picker(st, sel.kind, key="cmp_a", label="Variant a")
with c2:
    b_spec = sel.variant if sel.variant != "full" else "sliding_window:w=4"
    b_spec = st.text_input("Variant b (name:param=value,...)", b_spec, key="cmp_b")
    b_model = st.text_input("Model b (a model sharing a's tokenizer; default: the same)", sel.model_id,
                            key="cmp_model_b").strip() or sel.model_id
a = session.traced(variant=a_spec)
b_sel = sel if b_model == sel.model_id else replace(sel, model_id=b_model)
b = session.traced(b_sel, variant=b_spec) if a is not None else None
if a is not None and b is not None:
    try:
        cmp = session.memo(a, f"compare:{b.model_id}:{b.variant}:{id(b)}", lambda: compare(a, b))
    except ValueError as exc:
        st.error(str(exc))
        st.stop()
    layer, head = session.pick_layer_head(a, page="compare")
    st.plotly_chart(side_by_side(a, b, layer, head), key="cmp_maps")
    download_buttons(None, (a, b), "compare", selection={"layer": layer, "head": head})
    left, right = st.columns(2)
    with left:
        which = st.radio("Per-head change", list(METRICS), format_func=METRICS.get, horizontal=True, key="cmp_which")
        st.plotly_chart(per_head(cmp, which, a_name=a.variant, b_name=b.variant), key="cmp_heads")
    with right:
        st.plotly_chart(output_figure(cmp.output, a.variant, b.variant), key="cmp_output")
        out = cmp.output
        if out["kind"] != "hidden":
            m1, m2 = st.columns(2)
            m1.metric("KL of the output", f"{out['kl']:.4f}")
            m2.metric("Top-1 agreement", f"{out['top1_agreement']:.0%}")
        else:
            st.metric("Mean cosine of hidden states", f"{out['mean_cosine']:.4f}")
