"""Neuron view: for one query token, q, every key's k, q∘k, q·k and the softmax (Vig, 2019)."""

from __future__ import annotations

import streamlit as st

from app import session
from app.export_buttons import download_buttons
from app.views.head_view import token_labels
from app.views.neuron_view import MAX_KEYS, neuron_figure

st.header("Neuron view")
tr = session.traced()  # every page's trace keeps q and k (app/session.py)
if tr is not None:
    layer, head = session.pick_layer_head(tr, page="neuron")
    labels = token_labels(tr.tokens)
    if st.session_state.get("neuron_query", 0) >= tr.n:  # a shorter input than last time
        del st.session_state["neuron_query"]
    first = next((i for i, s in enumerate(tr.special) if not s), 0)
    c1, c2 = st.columns([2, 1])
    query = c1.selectbox("Query token", range(tr.n), index=tr.n - 1 if tr.kind == "causal" else first,
                         format_func=labels.__getitem__, key="neuron_query",
                         help="the token whose attention row is taken apart")
    max_keys = None
    if tr.n > MAX_KEYS:
        max_keys = int(c2.slider("Keys shown (most attended)", 8, min(tr.n, 256), MAX_KEYS, key="neuron_keys"))
    st.caption("q and k are the model's own, after rotary embedding; q∘k sums over dimensions to the score q·k. "
               "The softmax is recomputed from them (causal mask for decoders) and checked against the recorded "
               "probabilities (black ticks).")
    try:
        fig = neuron_figure(tr, layer, head, int(query), max_keys=max_keys)
    except ValueError as exc:
        session.show_error(exc)
    else:
        st.plotly_chart(fig, key="neuron_fig")
        st.download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True), f"neuron_L{layer}_H{head}.html")
        download_buttons(fig, tr, "neuron", selection={"layer": layer, "head": head, "query": int(query),
                                                        "max_keys": max_keys})
