"""Mask lab: a variant's mask or bias, how much of the attention it keeps, and its FlexAttention code.

It starts from the sidebar's variant and uses the loaded model's own sizes (tokens, grid, prefix tokens,
heads), for the pictures and for the code it writes.
"""

from __future__ import annotations

import streamlit as st

from analysis.context import context_of
from analysis.mask_stats import bias_matrix, blocks_kept, kept, mask_matrix
from app import session
from app.export_buttons import download_buttons
from app.views.mask_view import grid_figure, mask_figure
from kernels.context import TokenContext
from kernels.variants import VariantError, parse_variant

st.header("Mask lab")
sel = session.selection()
kind = sel.kind or "causal"
tr = session.traced() if sel.kind is not None else None  # the model's own tokens, grid, prefix tokens and heads
start = sel.variant if st.session_state.get("_lab_from") != sel.variant else None  # follow a new sidebar choice
st.session_state["_lab_from"] = sel.variant
left, right = st.columns([1, 2])
with left:
    spec = session.variant_picker(st, kind, key="lab", label="Variant to inspect", start=start)
    variant = parse_variant(spec)
    sources = ["the current input", "a synthetic input"] if tr is not None else ["a synthetic input"]
    source = st.radio("Tokens", sources, horizontal=True, key="lab_source")
    n_heads = tr.n_heads if tr is not None else 12
    if source == "the current input":
        ctx, tokens = context_of(tr), tr.tokens
    elif kind == "vit":
        grid = tuple(tr.grid) if tr is not None and tr.grid else (14, 14)
        n_prefix = tr.n - grid[0] * grid[1] if tr is not None and tr.grid else 1
        rows = st.slider("Grid rows", 2, 32, grid[0], key="lab_rows")
        cols = st.slider("Grid columns", 2, 32, grid[1], key="lab_cols")
        ctx, tokens = TokenContext.vit((rows, cols), n_prefix=n_prefix, n_heads=n_heads), None
    else:
        n = st.slider("Tokens", 8, 2048, min(max(tr.n if tr is not None else 256, 8), 2048), key="lab_n")
        ctx, tokens = TokenContext.sequence(n, causal=kind == "causal", n_heads=n_heads), None
    if st.session_state.get("lab_head", 0) >= ctx.n_heads:  # another model since the last visit
        del st.session_state["lab_head"]
    head = st.number_input("Head (decays and per-head masks differ by head)", 0, ctx.n_heads - 1, 0, key="lab_head")
native = session.native_pattern(tr) if tr is not None else ""
if native:
    st.caption(f"The model's own attention (part of every variant): {native}.")
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
    st.plotly_chart(mask_figure(keep_h, bias_h, spec, tokens, causal=ctx.causal), key="lab_mask")
    download_buttons(lambda: mask_figure(keep_h, bias_h, spec, tokens, causal=ctx.causal),
                     tr if source == "the current input" else None, "mask",
                     selection={"variant": spec, "head": int(head)})
    if content:
        st.info(f"{variant.name} decides per input (its scores, a calibration or an approximation): the matrix "
                "shows its fixed part only. The Compare page shows what it actually kept on this input.")
with left:
    what = "of the pairs the model computes (its causal triangle)" if ctx.causal else "of all pairs"
    st.metric("Pairs kept", f"{kept(keep, ctx.causal):.1%}", help=f"kept {what}; every figure uses this share")
    c1, c2 = st.columns(2)
    c1.metric("Blocks kept at 64", f"{blocks_kept(keep, 64, ctx.causal):.1%}",
              help="64×64 tiles a block-sparse kernel computes; the rest it skips")
    c2.metric("Blocks kept at 128", f"{blocks_kept(keep, 128, ctx.causal):.1%}")
n_prefix = int(ctx.special.sum()) if ctx.kind == "vit" else 0
if ctx.kind == "vit":
    st.subheader("On the image grid")
    controls, picture = st.columns([1, 2])
    r = controls.slider("Query row", 0, ctx.grid[0] - 1, ctx.grid[0] // 2, key="lab_qr")
    c = controls.slider("Query column", 0, ctx.grid[1] - 1, ctx.grid[1] // 2, key="lab_qc")
    use_cls = controls.checkbox("Query = CLS instead", key="lab_cls")
    query = 0 if use_cls else n_prefix + r * ctx.grid[1] + c
    picture.plotly_chart(grid_figure(keep_h[query], tuple(ctx.grid), n_prefix, query, spec,
                                     None if bias_h is None else bias_h[query]), key="lab_grid")
st.subheader("FlexAttention")
sizes = dict(n=ctx.n, n_heads=ctx.n_heads)
if ctx.kind == "vit":
    sizes.update(grid=tuple(ctx.grid), n_prefix=n_prefix)
where = (f"{ctx.grid[0]}×{ctx.grid[1]} grid, {n_prefix} prefix token(s)" if ctx.kind == "vit" else f"N = {ctx.n}")
st.caption(f"For {sel.model_id or 'this model'}: {where}, {ctx.n_heads} heads — the sizes on screen.")
try:
    snippet = variant.flex_snippet(ctx.kind, **sizes)
    st.code(snippet, language="python")
    st.download_button("Download the snippet", snippet, file_name=f"{variant.name}_flex.py", key="lab_snippet")
except VariantError as exc:
    st.info(str(exc))
