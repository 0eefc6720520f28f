"""Compare: two variants on one input, side by side, with what changed in attention and in the output.

Nothing is traced until the user presses Compare: a long input under a variant can take minutes, and the
fields must be editable first. Leaving the page stops a comparison that is still tracing.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from analysis.compare import compare
from app import session
from app.export_buttons import download_buttons
from app.views.compare_view import METRICS, output_figure, per_head, side_by_side
from app.views.head_view import head_heatmap

B_DEFAULT = {"vit": "window_2d:M=2"}  # else sliding_window:w=4

st.header("Compare")
sel = session.selection()
c1, c2 = st.columns(2)
with c1:
    a_spec = session.variant_picker(st, sel.kind, key="cmp_a", label="Variant a")
with c2:
    b_default = sel.variant if sel.variant != "full" else B_DEFAULT.get(sel.kind, "sliding_window:w=4")
    b_spec = session.kept(st.text_input, "Variant b (name:param=value,...)", key="cmp_b", default=b_default).strip()
    b_model = session.kept(st.text_input, "Model b (one sharing a's tokenizer; empty: the same model)",
                           key="cmp_model_b", default="").strip() or sel.model_id
request = (sel.model_id, sel.key, sel.layers, sel.heads, sel.truncate, a_spec, b_spec, b_model)
if st.button("Compare", type="primary", key="cmp_run", disabled=sel.kind is None):
    st.session_state["cmp_request"] = request

if st.session_state.get("cmp_request") != request:
    what = "the fields changed since the last comparison" if "cmp_request" in st.session_state else "nothing traced yet"
    st.caption(f"Press Compare to trace a ({a_spec}) and b ({b_spec}) on the sidebar's input ({what}). "
               "Below: the sidebar's own trace.")
    tr = session.traced()
    if tr is not None:
        layer, head = session.pick_layer_head(tr, page="compare")
        left, _ = st.columns(2)
        with left:
            st.plotly_chart(head_heatmap(tr, layer, head), key="cmp_current")
            download_buttons(None, tr, "head", selection={"layer": layer, "head": head}, key="cmp_current")
    st.stop()

a = session.traced(variant=a_spec)
b_sel = sel if b_model == sel.model_id else replace(sel, model_id=b_model, failed=False)
b = session.traced(b_sel, variant=b_spec) if a is not None else None
if a is None or b is None:
    st.stop()
try:
    cmp = session.memo(a, f"compare:{b.model_id}:{b.variant}:{id(b)}",
                       lambda: compare(a, b, session.token_names(a.model_id)))
except ValueError as exc:  # phrased for the user (analysis.compare)
    st.error(str(exc))
    st.stop()
layer, head = session.pick_layer_head(a, page="compare")
st.plotly_chart(side_by_side(a, b, layer, head), key="cmp_maps")
download_buttons(None, (a, b), "compare", selection={"layer": layer, "head": head})
left, right = st.columns(2)
with left:
    which = st.radio("Per-head change", list(METRICS), format_func=METRICS.get, horizontal=True, key="cmp_which",
                     help="attention moved: ½·Σ|a − b| per row, the share of attention that went elsewhere (0–1). "
                          "KL(a ‖ b) saturates near 20 nats as soon as b drops keys a uses.")
    heads_fig = per_head(cmp, which, a_name=a.variant, b_name=b.variant)
    st.plotly_chart(heads_fig, key="cmp_heads")
    download_buttons(heads_fig, (a, b), "compare_heads", selection={"metric": which}, key="cmp_heads")
with right:
    out_fig = output_figure(cmp.output, a.variant, b.variant)
    st.plotly_chart(out_fig, key="cmp_output")
    download_buttons(out_fig, (a, b), "compare_output", key="cmp_output")
    out = cmp.output
    if out["kind"] != "hidden":
        m1, m2 = st.columns(2)
        m1.metric("KL of the output", f"{out['kl']:.4f}")
        m2.metric("Top-1 agreement", f"{out['top1_agreement']:.0%}")
    else:
        st.metric("Mean cosine of hidden states", f"{out['mean_cosine']:.4f}")
