"""Mask lab: a variant's mask or bias, its sparsity at kernel block sizes, and its FlexAttention code."""

from __future__ import annotations

import numpy as np
import streamlit as st

from analysis.context import context_of
from analysis.mask_stats import bias_matrix, block_sparsity, mask_matrix, sparsity
from app import session
from app.export_buttons import download_buttons
from app.views.mask_view import grid_figure, mask_figure
from kernels.context import TokenContext
from kernels.variants import VariantError, parse_variant

st.header("Mask lab")
sel = session.selection()
kind = sel.kind or "causal"
left, right = st.columns([1, 2])
with left:
    spec = session.variant_picker(st, kind, key="lab", label="Variant to inspect")
    variant = parse_variant(spec)
    source = st.radio("Tokens", ["the current input", "a synthetic input"], horizontal=True, key="lab_source")
    if source == "the current input":
        tr = session.traced()
        if tr is None:
            st.stop()
        ctx, tokens = context_of(tr), tr.tokens
    elif kind == "vit":
        rows = st.slider("Grid rows", 2, 32, 14, key="lab_rows")
        cols = st.slider("Grid columns", 2, 32, 14, key="lab_cols")
        ctx, tokens = TokenContext.vit((rows, cols), n_prefix=1, n_heads=12), None
    else:
        n = st.slider("Tokens", 8, 2048, 256, key="lab_n")
        ctx, tokens = TokenContext.sequence(n, causal=kind == "causal", n_heads=12), None
    head = st.number_input("Head (decays and per-head masks differ by head)", 0, ctx.n_heads - 1, 0, key="lab_head")
try:
    variant.check(ctx)
    keep = mask_matrix(variant, ctx)
    bias = bias_matrix(variant, ctx)
except (VariantError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
keep_h = keep[min(head, keep.shape[0] - 1)]
bias_h = None if bias is None else bias[head]
content = variant.row_mask is not None or variant.row_probs is not None or variant.attend is not None
with right:
    st.plotly_chart(mask_figure(keep_h, bias_h, spec, tokens), key="lab_mask")
    download_buttons(lambda: mask_figure(keep_h, bias_h, spec, tokens), tr if source == "the current input" else None,
                     "mask", selection={"variant": spec, "head": int(head)})
    if content:
        st.info(f"{variant.name} decides per input (its scores, a calibration or an approximation): the matrix "
                "shows its fixed part only. The Compare page shows what it actually kept on this input.")
with left:
    causal = ctx.causal
    st.metric("Sparsity (pairs dropped)", f"{sparsity(keep, causal):.1%}")
    c1, c2 = st.columns(2)
    c1.metric("Blocks skipped at 64", f"{block_sparsity(keep, 64, causal):.1%}")
    c2.metric("Blocks skipped at 128", f"{block_sparsity(keep, 128, causal):.1%}")
if ctx.kind == "vit":
    n_prefix = int(np.asarray(ctx.special).sum())
    st.subheader("On the image grid")
    r = st.slider("Query row", 0, ctx.grid[0] - 1, ctx.grid[0] // 2, key="lab_qr")
    c = st.slider("Query column", 0, ctx.grid[1] - 1, ctx.grid[1] // 2, key="lab_qc")
    use_cls = st.checkbox("Query = CLS instead", key="lab_cls")
    query = 0 if use_cls else n_prefix + r * ctx.grid[1] + c
    st.plotly_chart(grid_figure(keep_h[query], tuple(ctx.grid), n_prefix, query, spec,
                                None if bias_h is None else bias_h[query]), key="lab_grid")
st.subheader("FlexAttention")
try:
    snippet = variant.flex_snippet(ctx.kind)
    st.code(snippet, language="python")
    st.download_button("Download the snippet", snippet, file_name=f"{variant.name}_flex.py", key="lab_snippet")
except VariantError as exc:
    st.info(str(exc))
