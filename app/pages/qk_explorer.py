"""Query–key explorer (AttentionViz): one head's queries and keys over many inputs, in one space."""

from __future__ import annotations

import io

import streamlit as st

from analysis import qk_embed as qe
from app import session
from app.export_buttons import download_buttons
from app.plot_events import plot_events
from app.views import qk_view

METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE (slow)", "umap": "UMAP"}
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]


@st.cache_data(show_spinner=False, max_entries=8)
def collected(model_id: str, layer: int, texts: tuple | None, digits: int, uploads: tuple, _progress=None):
    """q, k and attention of one layer over the inputs, by (model, layer, inputs)."""
    from models.inputs import open_image

    if texts is not None:
        inputs, names = list(texts), None
    else:
        inputs, names = qe.digit_inputs(digits)
        for name, data in uploads:
            inputs.append(open_image(data, name))
            names.append(name)
    return qe.collect(session.get_model(model_id), inputs, layer, names=names, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=32)
def embedded(model_id: str, layer: int, inputs_hash: str, head: int, method: str, dims: int, _qks, _progress=None):
    return qe.embed(_qks, head, method, dims, seed=0, progress=_progress)


@st.cache_data(show_spinner=False, max_entries=8)
def every_head(model_id: str, layer: int, inputs_hash: str, _qks):
    return qe.all_heads(_qks)


def md(text: str) -> str:
    """Plain text safe inside markdown."""
    return "".join("\\" + ch if ch in "\\`*_[]<>#|~$" else ch for ch in text)


def csv_of(emb) -> bytes:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(emb.table()).to_csv(buf, index=False)
    return buf.getvalue().encode()


st.header("Query–key explorer")
model_id = session.selection().model_id
lm = session.loaded_model()
if lm is None:
    st.stop()

# a click in either plot (2D or 3D) is read before the widgets and figures it changes are drawn
head_click = qk_view.point_at(plot_events("qk_heads").click)
if head_click is not None and head_click < lm.n_heads:
    st.session_state.qk_head = head_click
point_click = qk_view.point_at(plot_events("qk_scatter").click)
for key, top in (("qk_layer", lm.n_layers - 1), ("qk_head", lm.n_heads - 1)):
    if st.session_state.get(key, 0) > top:
        st.session_state[key] = 0
sb = st.expander("Layer, head, inputs and projection", expanded=False)
c1, c2 = sb.columns(2)
layer = int(c1.number_input("Layer", 0, lm.n_layers - 1, key="qk_layer"))
head = int(c2.number_input("Head", 0, lm.n_heads - 1, key="qk_head"))

texts, digits, uploads = None, 0, ()
if lm.kind == "vit":
    digits = sb.slider("Digits (test images)", 0, 200, 30, step=5, key="qk_n")
    files = sb.file_uploader("and images of your own", type=IMAGE_TYPES, accept_multiple_files=True)
    uploads = tuple((f.name, f.getvalue()) for f in files or [])
else:
    from models.inputs import decode_text

    upload = sb.file_uploader("Corpus (.txt, one input a line; default: the shipped sentences)", type=["txt"])
    corpus = qe.load_corpus() if upload is None else [
        s.strip() for s in decode_text(upload.getvalue(), upload.name).splitlines() if s.strip()]
    n = sb.slider("Inputs (lines)", 1, len(corpus), min(40, len(corpus)), key="qk_n") if len(corpus) > 1 else 1
    texts = tuple(corpus[:n])
method = sb.selectbox("Projection", qe.METHODS, format_func=METHOD_NAMES.get, key="qk_method")
dims = sb.radio("Dimensions", [2, 3], format_func=lambda d: f"{d}D", horizontal=True, key="qk_dims")
colour = sb.selectbox("Colour by", qe.FIELDS, format_func=qk_view.LABELS.get, key="qk_colour")
variant = session.selection().variant  # the sidebar's variant, applied in this layer for the linked map

st.subheader("Queries and keys in one space")
st.caption("Keys are translated so their centroid meets the queries' and both are scaled to comparable norms "
           "(AttentionViz): nearby query and key mean high attention. ● query ◆ key.")
n_inputs = len(texts) if texts is not None else digits + len(uploads)
try:
    with session.Progress(f"Queries and keys of layer {layer}", "inputs") as progress:
        qks = collected(model_id, layer, texts, digits, uploads,
                        _progress=lambda f, _msg: progress(round(f * n_inputs), n_inputs))
        emb = embedded(model_id, layer, qks.inputs_hash, head, method, dims, _qks=qks, _progress=progress.fraction)
except Exception as exc:
    session.show_error(exc)
    st.stop()

joint, heads = st.tabs(["Joint embedding", "Every head of the layer"])
with joint:
    if point_click is not None and point_click < len(emb):
        st.session_state.qk_point = point_click
    if st.session_state.get("qk_point", 0) >= len(emb):
        st.session_state.qk_point = 0
    fig = qk_view.scatter(emb, colour, selected=st.session_state.get("qk_point", 0))
    st.plotly_chart(fig, key="qk_scatter")
    d1, d2, d3 = st.columns([2, 1, 1])
    point = int(d1.number_input("Selected point (click one in the plot)", 0, len(emb) - 1, key="qk_point"))
    d2.download_button("Figure (HTML)", data=lambda: fig.to_html(include_plotlyjs=True), mime="text/html",
                       file_name=f"qk_L{layer}_H{head}_{method}.html", key="qk_dl_fig")
    d3.download_button("Points (CSV)", data=lambda: csv_of(emb), mime="text/csv",
                       file_name=f"qk_L{layer}_H{head}_{method}.csv", key="qk_dl_csv")
    download_buttons(fig, emb, "qk", selection={"colour": colour, "selected": point})
    p = emb.point(point)
    st.markdown(f"**{p['role']}** `{p['token']}` ({p['token_kind']}) · position {p['position']} · "
                f"input {p['input']} — {md(p['context']).replace('«', '**').replace('»', '**')}")
    try:
        row = qe.attention_row(qks, emb, point, lm=lm, variant=variant)
    except Exception as exc:
        session.show_error(exc)
    else:
        st.plotly_chart(qk_view.attention_row(row), key="qk_row")
        if row.changed_map is not None:
            st.plotly_chart(qk_view.map_change(row), key="qk_map")
        else:
            st.caption("Set a variant in the sidebar to see how this head's map changes under it.")
with heads:
    st.plotly_chart(qk_view.heads_matrix(every_head(model_id, layer, qks.inputs_hash, _qks=qks),
                                         selected_head=head), key="qk_heads")
