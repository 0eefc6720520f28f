"""Quality lens: what variants do to the model's task metric, against how much attention they keep.

It opens on the measured sweep shipped for the preset (bench/results/), and runs the user's own sweep on
request, one variant point at a time: each finished point is kept, so Stop (or leaving the page) loses only
the point that was running, and a later sweep reuses every point already measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from app import session
from app.export_buttons import download_buttons
from app.views.quality_view import damage_heatmap, tradeoff_figure

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
SHIPPED = {  # preset → the sweep measured for it, and the command that made it (bench/results/quality.md)
    "smollm2-135m": ("sweep_smollm2_streaming.json",
                     'attnscope sweep --model smollm2-135m --variants full "sliding_window:w=64|128|256|512,sinks=4|0" '
                     "--json --per-head"),
    "digits-vit": ("sweep_digits_vit.json",
                   'attnscope sweep --model digits-vit --variants full "window_2d:M=2|3|4|6" '
                   '"neighborhood_2d:k=1|2|3|5" "topk:k=4|8|16|32|48" --json --per-head'),
    "minilm": ("sweep_minilm.json",
               'attnscope sweep --model minilm --variants full "sliding_window:w=4|16|64,sinks=0|2" "topk:k=4|16|64" '
               "--json --per-head"),
}
SHOWN = {"variant": "variant", "sparsity": "kept", "value": "metric", "output_kl": "output KL",
         "top1_agreement": "top-1 agreement", "attn_kl": "attention KL", "attn_mass_lost": "mass lost",
         "seconds": "seconds"}


@st.cache_data(show_spinner=False)
def shipped(model_id: str) -> list[dict] | None:
    if model_id not in SHIPPED:
        return None
    path = RESULTS / SHIPPED[model_id][0]
    return json.loads(path.read_text()) if path.is_file() else None


@st.cache_resource(show_spinner=False, max_entries=4)
def batches(model_id: str, limit: int):
    from analysis.quality import default_batches

    return default_batches(session.get_model(model_id), limit=limit)


@st.cache_data(show_spinner=False, max_entries=64)
def sweep_point(model_id: str, spec: str, limit: int, _progress=None) -> tuple[list[dict], dict]:
    """One variant point against full on the task set: its row(s) and per-head KL, kept per point."""
    from analysis.quality import sweep

    result = sweep(session.get_model(model_id), [spec], batches=batches(model_id, limit), progress=_progress)
    return result.rows, {k: v["kl"] for k, v in result.heads.items()}


def show(rows: list[dict], heads: dict, model_id: str) -> None:
    st.plotly_chart(tradeoff_figure(rows), key="q_curve")
    download_buttons(lambda: tradeoff_figure(rows), rows, "quality", selection={"model": model_id})
    st.dataframe([{SHOWN[k]: r.get(k) for k in SHOWN} for r in rows], hide_index=True)
    names = [r["variant"] for r in rows if r["variant"] in heads]
    if names:
        pick = st.selectbox("Per-head damage of", names, index=len(names) - 1, key="q_pick")
        st.plotly_chart(damage_heatmap(heads[pick], model=model_id, variant=pick), key="q_damage")


def run(model_id: str, specs: tuple[str, ...], limit: int) -> None:
    """The user's sweep, point by point, with a progress bar; finished points go to session state at once."""
    from analysis.quality import expand_specs
    from kernels.variants import VariantError, parse_variant
    from models.memory import estimate_bytes, require

    labels = expand_specs(list(specs))
    if not labels:
        raise VariantError("no variant given; write at least one, e.g. full or sliding_window:w=64")
    lm = session.get_model(model_id)
    work = batches(model_id, limit)
    for label in labels:  # cheap checks first: a bad spec is one line before any model runs
        parse_variant(label).check(work[0].enc.ctx)
    # the memory guard before anything runs (the sweep does not guard itself yet): the longest input's forward
    require(estimate_bytes(lm, max(b.enc.ctx.n for b in work), dense=False, qk=False), "the sweep")
    total = len(labels) * len(work) * 2  # per point and input: a full run and a variant run
    done = {"rows": [], "heads": {}, "request": (model_id, specs, limit), "of": len(labels), "complete": False}
    st.session_state["q_done"] = done
    with session.Progress("Sweeping", "model runs") as progress:
        for i, label in enumerate(labels):
            calls = [0]

            def step(_msg: str, i=i, calls=calls) -> None:
                progress(i * len(work) * 2 + calls[0], total)
                calls[0] += 1

            rows, heads = sweep_point(model_id, label, limit, _progress=step)
            done["rows"] += rows
            done["heads"].update(heads)
    done["complete"] = True


st.header("Quality lens")
sel = session.selection()
st.caption("Each variant against the model's own attention on its task set (perplexity on a shipped text, "
           "embedding cosine or masked tokens, or the digits test split), and against the fraction of attention "
           "scores it keeps (out of those the model's own mask allows).")
with st.expander("Run your own sweep (slow on a CPU)"):
    specs = session.kept(st.text_area, "Variants, one per line (a|b|c expands a parameter grid)", key="q_specs",
                         default="full\nsliding_window:w=16|64,sinks=4\nsliding_window:w=16|64,sinks=0"
                         if sel.kind != "vit" else "full\nwindow_2d:M=2|4\nneighborhood_2d:k=1|2\ntopk:k=8|16|32")
    limit = int(session.kept(st.number_input, "Inputs (batches) to use", key="q_limit", default=4, min_value=1,
                             max_value=100))
    if sel.kind is not None and st.button("Run the sweep", key="q_run"):
        st.session_state["q_request"] = (sel.model_id, tuple(s.strip() for s in specs.splitlines() if s.strip()),
                                         limit)

req = st.session_state.get("q_request")
if req is not None and req[0] == sel.model_id:
    try:
        run(*req)
    except Exception as exc:
        session.show_error(exc)
    except BaseException:  # Stop, or the user went elsewhere: keep the finished points, do not restart
        st.session_state["q_request"] = None
        raise
    st.session_state["q_request"] = None

done = st.session_state.get("q_done")
if done is not None and done["request"][0] == sel.model_id and done["rows"]:
    if not done["complete"]:
        st.warning(f"Stopped: {len(done['rows'])} of {done['of']} points finished (shown). Run the sweep again to "
                   "finish it; finished points are not measured twice.")
    st.subheader("Your sweep")
    show(done["rows"], done["heads"], sel.model_id)
elif (rows := shipped(sel.model_id)) is not None:
    st.caption(f"The sweep measured for {sel.model_id} and shipped with attnscope: `{SHIPPED[sel.model_id][1]}` "
               f"(bench/results/{SHIPPED[sel.model_id][0]}).")
    show(rows, {r["variant"]: np.asarray(r["kl_heads"]) for r in rows if r.get("kl_heads")}, sel.model_id)
elif sel.kind is not None:
    st.info(f"No sweep ships for {sel.model_id}; run your own above.")
