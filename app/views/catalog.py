"""One registry of exportable views: how each Figure is built from saved data plus a selection.

The app's download buttons, `attnscope export` and `attnscope render` all call `build_view`, so a figure
rebuilt from an export's saved data is the figure the app showed. Data is a dict:

    {"trace": Trace}              model, head, neuron, image, mask, metrics (and qk, from the trace's q, k)
    {"trace": a, "b": b}          compare (two traces of one input; {"trace": t, "a": a, "b": b} when the
                                  other views draw t and the comparison is a vs b)
    {"points": Embedding}         qk (query–key points, from analysis.qk_embed; optionally with "trace")

A selection is a plain JSON-able dict (layer, head, query, metric, ...); `resolve` fills in the defaults and
checks it, and its result is what an export stores in view.json.

    build_view("head", {"trace": tr}, {"layer": 2, "head": 5})
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from kernels.errors import UserError

VIEWS = ("model", "head", "neuron", "image", "qk", "mask", "compare", "metrics")


class ViewError(UserError, ValueError):
    """A view name, data or selection that cannot make a figure; the message says why."""


@dataclass(frozen=True)
class View:
    name: str
    description: str
    needs: tuple[str, ...]  # keys of the data dict the view reads
    keys: tuple[str, ...]  # selection keys it reads
    build: Callable[[dict, dict], go.Figure]  # (data, resolved selection) → Figure
    defaults: Callable[[dict, dict], dict]  # (data, given selection) → the full selection, checked
    check: Callable[[dict], str | None]  # why the view does not apply to this data, or None


# -- data ------------------------------------------------------------------------------------------------
def as_data(obj) -> dict:
    """A Trace, an (a, b) pair, an Embedding or a dict → the data dict views read."""
    from models.trace import Trace

    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, Trace):
        return {"trace": obj}
    if isinstance(obj, tuple | list) and len(obj) == 2 and all(isinstance(t, Trace) for t in obj):
        return {"trace": obj[0], "b": obj[1]}
    if _is_points(obj):
        return {"points": obj}
    raise ViewError(f"cannot make view data of a {type(obj).__name__}")


def _is_points(obj) -> bool:
    return all(hasattr(obj, a) for a in ("coords", "role", "token_index", "method", "dims"))


def _trace(data: dict):
    tr = data.get("trace")
    if tr is None:
        raise ViewError("this view needs a trace")
    return tr


# -- selection helpers -----------------------------------------------------------------------------------
def _int(sel: dict, key: str, default: int, top: int, what: str) -> int:
    value = sel.get(key, default)
    if value is None:
        value = default
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ViewError(f"{key} must be a whole number, not {value!r}") from None
    if not 0 <= value < top:
        raise ViewError(f"{key} {value} does not exist; {what} has {key}s 0..{top - 1}")
    return value


def _layer_head(tr, sel: dict) -> dict:
    return {"layer": _int(sel, "layer", 0, tr.n_layers, "the trace"),
            "head": _int(sel, "head", 0, tr.n_heads, "the trace")}


def default_query(tr) -> int:
    """The query a view starts on: the last token of a decoder, else the first ordinary token."""
    if tr.kind == "causal":
        return tr.n - 1
    return next((i for i, s in enumerate(tr.special) if not s), 0)


def _token_query(tr, query) -> int:
    """A token index from a query given as an index, "cls" or a [row, col] patch (vision models)."""
    if query is None:
        return default_query(tr)
    if isinstance(query, str):
        if query.lower() != "cls":
            return _int({"query": query}, "query", 0, tr.n, "the trace")
        special = [i for i, s in enumerate(tr.special) if s]
        if not special:
            raise ViewError(f"{tr.model_id} has no CLS token; give the query as a token index")
        return special[0]
    if isinstance(query, tuple | list):
        from app.views.image_view import query_token

        try:
            return query_token(tr, tuple(query) if isinstance(query, list) else query)
        except (ValueError, TypeError) as exc:
            raise ViewError(f"query {query!r}: {exc}") from None
    return _int({"query": query}, "query", 0, tr.n, "the trace")


# -- model -----------------------------------------------------------------------------------------------
def _model_build(data, sel):
    from app.views.model_grid import model_grid

    return model_grid(_trace(data))


# -- head ------------------------------------------------------------------------------------------------
def _head_build(data, sel):
    from app.views.head_view import head_heatmap

    return head_heatmap(_trace(data), sel["layer"], sel["head"])


# -- neuron ----------------------------------------------------------------------------------------------
def _neuron_check(data):
    tr = data.get("trace")
    if tr is None:
        return "needs a trace"
    if not tr.has_qk():
        return "needs queries and keys: trace with qk=True (`attnscope trace --qk`)"
    return None


def _neuron_defaults(data, sel):
    from app.views.neuron_view import MAX_KEYS

    tr = _trace(data)
    out = _layer_head(tr, sel)
    out["query"] = _token_query(tr, sel.get("query"))
    max_keys = sel.get("max_keys", MAX_KEYS)
    out["max_keys"] = None if max_keys is None else int(max_keys)
    return out


def _neuron_build(data, sel):
    from app.views.neuron_view import neuron_figure

    return neuron_figure(_trace(data), sel["layer"], sel["head"], sel["query"], max_keys=sel["max_keys"])


# -- image -----------------------------------------------------------------------------------------------
def _image_check(data):
    tr = data.get("trace")
    if tr is None:
        return "needs a trace"
    if tr.kind != "vit" or not tr.grid:
        return "needs a vision model's trace"
    if tr.image is None:
        return "the trace kept no image"
    if not tr.dense:
        return "needs dense attention (a trace within its dense limit)"
    return None


def _image_defaults(data, sel):
    from analysis.rollout import REDUCTIONS, RESIDUAL
    from app.views.image_view import OPACITY, query_token

    tr = _trace(data)
    query = sel.get("query", "cls" if any(tr.special) else 0)
    if isinstance(query, tuple | list):
        query = [int(v) for v in query]
    elif not isinstance(query, str):
        query = int(query)
    try:
        query_token(tr, tuple(query) if isinstance(query, list) else query)
    except ValueError as exc:
        raise ViewError(str(exc)) from None
    heads = sel.get("heads")
    if heads is not None:
        heads = [int(h) for h in heads]
        for h in heads:
            _int({"head": h}, "head", 0, tr.n_heads, "the trace")
    mode = sel.get("mode", "attention")
    if mode not in ("attention", "rollout"):
        raise ViewError(f"image mode must be 'attention' or 'rollout', not {mode!r}")
    reduce = sel.get("reduce", "mean")
    if reduce not in REDUCTIONS:
        raise ViewError(f"reduce must be one of {', '.join(REDUCTIONS)}, not {reduce!r}")
    return {"layer": _int(sel, "layer", 0, tr.n_layers, "the trace"), "query": query, "mode": mode,
            "per_head": bool(sel.get("per_head", True)), "heads": heads,
            "opacity": float(sel.get("opacity", OPACITY)), "residual": float(sel.get("residual", RESIDUAL)),
            "reduce": reduce}


def _image_build(data, sel):
    from app.views.image_view import attention_overlay, rollout_overlay

    tr = _trace(data)
    query = tuple(sel["query"]) if isinstance(sel["query"], list) else sel["query"]
    if sel["mode"] == "rollout":
        return rollout_overlay(tr, query, residual=sel["residual"], reduce=sel["reduce"], opacity=sel["opacity"])
    return attention_overlay(tr, sel["layer"], query, per_head=sel["per_head"], heads=sel["heads"],
                             opacity=sel["opacity"])


# -- qk --------------------------------------------------------------------------------------------------
def _qk_check(data):
    if data.get("points") is not None:
        return None
    tr = data.get("trace")
    if tr is None:
        return "needs query–key points or a trace with q and k"
    if not tr.has_qk():
        return "needs queries and keys: trace with qk=True (`attnscope trace --qk`)"
    if tr.n < 3:
        return "needs at least 3 tokens to project"
    return None


def _qk_defaults(data, sel):
    from analysis.qk_embed import FIELDS, METHODS

    colour = sel.get("colour", "role")
    if colour not in FIELDS:
        raise ViewError(f"colour must be one of {', '.join(FIELDS)}, not {colour!r}")
    emb = data.get("points")
    if emb is not None:  # the points decide the layer, head and projection
        out = {"layer": int(emb.layer), "head": int(emb.head), "method": emb.method, "dims": int(emb.dims)}
        n = len(emb)
    else:
        tr = _trace(data)
        out = _layer_head(tr, sel)
        method = sel.get("method", "pca")
        if method not in METHODS:
            raise ViewError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        dims = int(sel.get("dims", 2))
        if dims not in (2, 3):
            raise ViewError("dims must be 2 or 3")
        out.update(method=method, dims=dims)
        n = 2 * tr.n
    selected = sel.get("selected")
    if selected is not None:
        selected = _int(sel, "selected", 0, n, "the embedding")
    out.update(colour=colour, selected=selected, variant=str(sel.get("variant", _points_variant(data))))
    return out


def _points_variant(data) -> str:
    tr = data.get("trace")
    return tr.variant if tr is not None else "full"


def points_from_trace(tr, layer: int, head: int, method: str = "pca", dims: int = 2, seed: int = 0):
    """The joint query–key embedding of one head over this trace's own tokens (one input)."""
    from analysis import qk_embed as qe

    q, k = tr.q(layer), tr.k(layer)
    h = hashlib.sha256()
    for a in (q, k):
        h.update(np.ascontiguousarray(a).tobytes())
    image_name = tr.input.get("name") if tr.kind == "vit" else None
    qks = qe.QKSet(
        model_id=tr.model_id, kind=tr.kind, layer=layer, q=q, k=k, tokens=list(tr.tokens),
        token_kind=[qe.token_kind(t, bool(s), tr.kind) for t, s in zip(tr.tokens, tr.special)],
        context=qe.contexts(list(tr.tokens), image_name), input_index=np.zeros(tr.n, dtype=np.int64),
        position=np.arange(tr.n), offsets=np.array([0, tr.n]), probs=[tr.attention(layer) if tr.dense else None],
        inputs=[], names=[tr.input.get("name") or "input 0"], inputs_hash="trace-" + h.hexdigest()[:20],
    )
    return qe.embed(qks, head, method, dims, seed=seed)


def qk_points(data: dict, sel: dict):
    """The Embedding the qk view draws: the given points, else computed from the trace (and kept in
    data["_qk"], so an export saves the very points it drew)."""
    emb = data.get("points")
    if emb is None:
        key = (sel["layer"], sel["head"], sel["method"], sel["dims"])
        cache = data.setdefault("_qk", {})
        if key not in cache:
            cache[key] = points_from_trace(_trace(data), *key)
        emb = cache[key]
    return emb


def _qk_build(data, sel):
    from app.views.qk_view import scatter

    fig = scatter(qk_points(data, sel), sel["colour"], selected=sel["selected"])
    if sel["variant"] != "full":  # q and k come from a model running a variant: the title says which
        fig.layout.title.text = f"{fig.layout.title.text} · {sel['variant']}"
    return fig


# -- mask ------------------------------------------------------------------------------------------------
def _mask_check(data):
    return None if data.get("trace") is not None else "needs a trace (its tokens and their positions)"


def _mask_defaults(data, sel):
    from kernels.variants import VariantError, parse_variant

    tr = _trace(data)
    spec = str(sel.get("variant", tr.variant))
    try:
        parse_variant(spec)
    except VariantError as exc:
        raise ViewError(str(exc)) from None
    return {"variant": spec, "head": _int(sel, "head", 0, tr.n_heads, "the trace")}


def mask_matrices(tr, spec: str):
    """(keep, bias) of a variant on this trace's tokens, as the mask lab draws them."""
    from analysis.context import context_of
    from analysis.mask_stats import bias_matrix, mask_matrix
    from kernels.variants import VariantError, parse_variant

    variant = parse_variant(spec)
    ctx = context_of(tr)
    try:
        variant.check(ctx)
        return mask_matrix(variant, ctx), bias_matrix(variant, ctx)
    except VariantError as exc:
        raise ViewError(str(exc)) from None


def _mask_build(data, sel):
    from app.views.mask_view import mask_figure

    tr = _trace(data)
    keep, bias = mask_matrices(tr, sel["variant"])
    head = sel["head"]
    keep_h = keep[min(head, keep.shape[0] - 1)]
    bias_h = None if bias is None else bias[head]
    return mask_figure(keep_h, bias_h, sel["variant"], tr.tokens, causal=tr.kind == "causal")


# -- compare ---------------------------------------------------------------------------------------------
def _compare_check(data):
    if _a(data) is None or data.get("b") is None:
        return "needs two traces of one input (a variant b)"
    from analysis.compare import check_comparable

    try:
        check_comparable(_a(data), data["b"])
    except ValueError as exc:
        return str(exc)
    return None


def _a(data):
    return data.get("a") if data.get("a") is not None else data.get("trace")


def _compare_defaults(data, sel):
    out = _layer_head(_a(data), sel)
    out["variant_a"], out["variant_b"] = _a(data).variant, data["b"].variant
    return out


def _compare_build(data, sel):
    from app.views.compare_view import side_by_side

    return side_by_side(_a(data), data["b"], sel["layer"], sel["head"])


# -- metrics ---------------------------------------------------------------------------------------------
def _metrics_check(data):
    tr = data.get("trace")
    if tr is None:
        return "needs a trace"
    if not tr.has(0, "entropy"):
        return "the trace kept no row statistics"
    return None


def metric_names(tr) -> list[str]:
    from analysis.head_metrics import trace_head_metrics

    return list(trace_head_metrics(tr))


def _metrics_defaults(data, sel):
    names = metric_names(_trace(data))
    metric = sel.get("metric", names[0])
    if metric not in names:
        raise ViewError(f"metric must be one of {', '.join(names)} for this trace, not {metric!r}")
    return {"metric": metric}


def _metrics_build(data, sel):
    from analysis.head_metrics import METRICS, trace_head_metrics
    from app.views.quality_view import head_heatmap

    tr = _trace(data)
    name = sel["metric"]
    values = trace_head_metrics(tr)[name]
    return head_heatmap(values, what=name, heading=f"{tr.model_id} · {tr.variant} · {METRICS[name]}",
                        zmin=0 if name != "entropy" else None)


def _trace_check(data):
    return None if data.get("trace") is not None else "needs a trace"


def _trace_defaults(data, sel):
    _trace(data)
    return {}


def _head_defaults(data, sel):
    return _layer_head(_trace(data), sel)


CATALOG: dict[str, View] = {v.name: v for v in (
    View("model", "every layer × head as thumbnails", ("trace",), (), _model_build, _trace_defaults, _trace_check),
    View("head", "one head's attention map", ("trace",), ("layer", "head"), _head_build, _head_defaults,
         _trace_check),
    View("neuron", "q, k, q∘k, scores and softmax of one query", ("trace",),
         ("layer", "head", "query", "max_keys"), _neuron_build, _neuron_defaults, _neuron_check),
    View("image", "a query's attention (or rollout) over the image", ("trace",),
         ("layer", "query", "mode", "per_head", "heads", "opacity", "residual", "reduce"),
         _image_build, _image_defaults, _image_check),
    View("qk", "queries and keys of one head in one space", ("points",),
         ("layer", "head", "method", "dims", "colour", "selected", "variant"), _qk_build, _qk_defaults, _qk_check),
    View("mask", "a variant's mask (or bias) on the trace's tokens", ("trace",), ("variant", "head"),
         _mask_build, _mask_defaults, _mask_check),
    View("compare", "two variants side by side and their difference", ("trace", "b"), ("layer", "head"),
         _compare_build, _compare_defaults, _compare_check),
    View("metrics", "one per-head metric as a layers × heads map", ("trace",), ("metric",),
         _metrics_build, _metrics_defaults, _metrics_check),
)}
assert tuple(CATALOG) == VIEWS


# -- API -------------------------------------------------------------------------------------------------
def get_view(name: str) -> View:
    if not isinstance(name, str) or name not in CATALOG:
        raise ViewError(f"unknown view {name!r}; pick one of {', '.join(VIEWS)}")
    return CATALOG[name]


def why_not(name: str, data) -> str | None:
    """Why view `name` cannot be drawn from `data`, or None when it can."""
    return get_view(name).check(as_data(data))


def applicable(data) -> list[str]:
    """The views that can be drawn from `data`, in catalog order."""
    data = as_data(data)
    return [name for name, v in CATALOG.items() if v.check(data) is None]


def resolve(name: str, data, selection: dict | None = None) -> dict:
    """The full, checked selection (defaults filled in) that `build_view` draws and an export stores."""
    view = get_view(name)
    data = as_data(data)
    reason = view.check(data)
    if reason is not None:
        raise ViewError(f"the {name} view {reason}")
    sel = {k: v for k, v in (selection or {}).items() if k in view.keys}
    return view.defaults(data, sel)


def build_view(name: str, data, selection: dict | None = None) -> go.Figure:
    """The Figure of view `name` from saved data and a selection (layer, head, query, ...)."""
    data = as_data(data)
    sel = resolve(name, data, selection)
    try:
        return get_view(name).build(data, sel)
    except ViewError:
        raise
    except (ValueError, KeyError) as exc:
        raise ViewError(f"the {name} view cannot be drawn: {exc}") from None
