"""Clicks and zooms on a plotly chart, including the charts Streamlit's own selection cannot report.

`st.plotly_chart(on_select=...)` reports only what plotly can *select* (scatter and bar points): a
click on a heatmap or on a 3D scatter reports nothing. This small component listens to plotly's
own events on the chart drawn with a given key — `plotly_click` (any trace: the clicked cell or
point) and `plotly_relayout` (a zoom box) — and hands each one to Python once, as a trigger value:

    st.plotly_chart(fig, key="grid")
    ev = plot_events("grid")
    if ev.click: ...   # {"x", "y", "z", "customdata", "curve", "index"} of the clicked point
    if ev.zoom: ...    # {"x": [x0, x1], "y": [y0, y1]}: the axis ranges of the new view

Under AppTest (no browser) both are None.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

# Streamlit marks a keyed element's container with the class st-key-<key>; the chart inside it is the
# plotly graph div, whose `.on` registers plotly event handlers. The chart may be redrawn (a new div), so
# the component keeps looking; each div gets its handlers once, and they call the newest sender.
_JS = r"""
export default function (component) {
  const { data, setTriggerValue } = component;
  const senders = (window.__attnscopePlotEvents = window.__attnscopePlotEvents || {});
  senders[data.key] = setTriggerValue;
  const send = (event, value) => senders[data.key] && senders[data.key](event, value);
  const plain = (v) => (v === undefined ? null : (v && typeof v === "object" && v.length !== undefined
                                                    && typeof v !== "string") ? Array.from(v, plain) : v);
  const attach = () => {
    const gd = document.querySelector(`.st-key-${data.key} .js-plotly-plot`);
    if (!gd || typeof gd.on !== "function" || gd.__attnscopeEvents === data.key) return;
    gd.__attnscopeEvents = data.key;
    gd.on("plotly_click", (ev) => {
      const p = ev && ev.points && ev.points[0];
      if (p) send("click", {x: plain(p.x), y: plain(p.y), z: plain(p.z), customdata: plain(p.customdata),
                            curve: p.curveNumber, index: plain(p.pointNumber)});
    });
    gd.on("plotly_relayout", (ev) => {
      const x = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]], y = [ev["yaxis.range[0]"], ev["yaxis.range[1]"]];
      if (x[0] !== undefined && y[0] !== undefined) send("zoom", {x: x, y: y});
    });
  };
  attach();
  const timer = setInterval(attach, 250);
  return () => clearInterval(timer);
}
"""

_component = st.components.v2.component("attnscope_plot_events", js=_JS)


@dataclass(frozen=True)
class PlotEvents:
    click: dict | None = None
    zoom: dict | None = None


def _ignore() -> None:
    """Trigger values are only reported for events with a callback; the page reads them from the result."""


def plot_events(chart_key: str) -> PlotEvents:
    """The click or zoom the user just made on the chart drawn with `key=chart_key` (None when there was none)."""
    result = _component(key=f"{chart_key}-events", data={"key": chart_key}, height=0,
                        on_click_change=_ignore, on_zoom_change=_ignore)
    return PlotEvents(click=getattr(result, "click", None), zoom=getattr(result, "zoom", None))
