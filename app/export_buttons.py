"""Download buttons under a view: the figure (HTML, PNG, SVG, PDF), its data, and every view as one zip.

Pages call one line after drawing a figure:

    download_buttons(fig, tr, "head", selection={"layer": layer, "head": head})

Every file is made on click (Streamlit runs a callable `data` only when its button is pressed), so a page
never waits for Chromium. HTML needs no browser; PNG, SVG and PDF share one Chromium for the whole server.
"""

from __future__ import annotations

import hashlib
import json

import streamlit as st

from app import export
from app.views.catalog import CATALOG, build_view, why_not


def _stem(name: str, selection: dict | None) -> str:
    sel = selection or {}
    parts = [name] + [f"{k[0].upper()}{sel[k]}" for k in ("layer", "head") if sel.get(k) is not None]
    if sel.get("metric"):
        parts.append(str(sel["metric"]))
    return export.safe_name("_".join(str(p) for p in parts))


def _chromium_problem() -> str | None:
    try:
        export.find_chromium()
    except export.ExportError as exc:
        return str(exc)
    return None


def download_buttons(fig, data=None, name: str = "figure", *, selection: dict | None = None,
                     key: str | None = None, where=None) -> None:
    """`fig`: the Figure shown, a callable making it (run on click), or None (the catalog builds view `name`
    from `data` and `selection` — the figure the page drew with the same view function).

    A "Download" popover: the figure in four formats, its data (a zip `attnscope render` rebuilds), and,
    when the data holds a trace, every view that applies as one zip.

    `name` is a catalog view (model, head, ...) or any other name; outside the catalog, or when the data
    cannot rebuild the view, the data zip keeps the figure's plotly JSON (and the trace, when there is one).
    """
    where = where or st
    get_fig = _lazy_figure(fig, data, name, selection)
    stem = _stem(name, selection)
    digest = hashlib.sha1(json.dumps(selection or {}, sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = f"dl_{export.safe_name(key or name)}_{digest}"
    in_catalog = name in CATALOG and data is not None and why_not(name, data) is None
    bundle_name = name if in_catalog else f"{export.safe_name(name)}_figure"
    problem = _chromium_problem()
    with where.popover("Download", icon=":material/download:"):
        st.download_button("HTML (interactive, offline)", data=lambda: export.html_bytes(get_fig()),
                           file_name=f"{stem}.html", mime=export.MIME["html"], on_click="ignore",
                           key=f"{base}_html", width="stretch")
        cols = st.columns(3)
        for col, fmt in zip(cols, export.STATIC):
            col.download_button(fmt.upper(), data=lambda fmt=fmt: export.figure_bytes(get_fig(), fmt),
                                file_name=f"{stem}.{fmt}", mime=export.MIME[fmt], on_click="ignore",
                                key=f"{base}_{fmt}", disabled=problem is not None, width="stretch")
        if problem is not None:
            st.caption(problem)
        st.download_button("Data (zip: trace + view)", key=f"{base}_data", on_click="ignore", width="stretch",
                           data=lambda: export.view_zip(bundle_name, data, selection, fig=get_fig()),
                           file_name=f"{stem}.data.zip", mime=export.MIME["zip"],
                           help="manifest.json + trace.npz + view.json; `attnscope render` rebuilds the figure")
        if data is not None and _has_trace(data):
            st.download_button("Export all views (zip)", key=f"{base}_all", on_click="ignore", width="stretch",
                               data=lambda: export.all_views_zip(data, selection),
                               file_name=f"attnscope_{export.safe_name(_model_of(data))}_all_views.zip",
                               mime=export.MIME["zip"],
                               help="every view that applies to this trace, as PNG, SVG, PDF and HTML, with data")


def _lazy_figure(fig, data, name: str, selection: dict | None):
    """fig itself; or, made on first click and kept, the callable's figure or the catalog's (fig=None)."""
    if fig is not None and not callable(fig):
        return lambda: fig
    made = []

    def get():
        if not made:
            made.append(fig() if fig is not None else build_view(name, data, selection))
        return made[0]

    return get


def _has_trace(data) -> bool:
    from models.trace import Trace

    if isinstance(data, Trace):
        return True
    if isinstance(data, tuple | list) and data and isinstance(data[0], Trace):
        return True
    return isinstance(data, dict) and data.get("trace") is not None


def _model_of(data) -> str:
    from app.views.catalog import as_data

    try:
        return as_data(data)["trace"].model_id
    except Exception:
        return "model"
