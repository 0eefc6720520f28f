"""Streamlit wiring shared by the pages: the sidebar, cached models and traces, progress, errors.

The sidebar is drawn once by app/main.py for every page, so the model, input and variant
stay the same while the user moves between pages; pages read them with `selection()`.
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from app import examples
from kernels.variants import REGISTRY, VariantError, parse_variant
from models.registry import PRESETS

DEFAULT_MODEL = os.environ.get("ATTNSCOPE_MODEL", "minilm")
DEFAULT_EXAMPLE = next(iter(examples.TEXT_EXAMPLES))
CUSTOM = "other (type an id or folder)"
MAX_UPLOAD_MB = 20
log = logging.getLogger("attnscope.app")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Selection:
    model_id: str
    kind: str | None  # None: no model picked, or it failed to load (the sidebar said why)
    text: str | None
    image_bytes: bytes | None
    image_name: str | None
    variant: str
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    truncate: bool = False  # cut a text longer than the model takes (the trace notes how many tokens went)
    failed: bool = False  # the model could not be loaded; the error is already on screen

    @property
    def key(self) -> str:
        """A digest of the input, so cached traces are keyed by content, not by widget state."""
        h = hashlib.sha256()
        h.update((self.text or "").encode("utf-8", "surrogatepass"))
        h.update(self.image_bytes or b"")
        return h.hexdigest()

    def with_variant(self, variant: str) -> Selection:
        return replace(self, variant=variant)


MODEL_CACHE = int(os.environ.get("ATTNSCOPE_MODEL_CACHE", "4"))  # models kept loaded (least recently used go)


@st.cache_resource(show_spinner=False, max_entries=MODEL_CACHE)
def get_model(model_id: str):
    from models.registry import load

    return load(model_id)


# cache_resource, not cache_data: every rerun gets the same Trace object instead of an unpickled copy
# (tens of MB for a few hundred tokens). Traces are never modified after they are made.
@st.cache_resource(show_spinner=False, max_entries=32)
def get_trace(model_id: str, input_key: str, text: str | None, image_bytes: bytes | None, image_name: str | None,
              variant: str, qk: bool = False, layers: tuple | None = None, heads: tuple | None = None,
              truncate: bool = False, _progress=None):
    """Traces are cached by (model, input, variant): changing layer, head or page never re-runs the model.

    `_progress(done, total)` after each layer (not part of the cache key)."""
    from models.inputs import open_image
    from models.tracer import trace

    lm = get_model(model_id)
    image = open_image(image_bytes, image_name or "upload") if image_bytes is not None else None
    return trace(lm, text=text, image=image, image_name=image_name, variant=variant, qk=qk,
                 max_tokens=lm.max_tokens if truncate and text is not None else None,
                 layers=list(layers) if layers is not None else None,
                 heads=list(heads) if heads is not None else None, progress=_progress)


def _trace_of(sel: Selection, variant: str, progress=None):
    """The one trace every page asks for (q and k included), so moving between pages never re-runs the model."""
    return get_trace(sel.model_id, sel.key, sel.text, sel.image_bytes, sel.image_name, variant, True,
                     sel.layers, sel.heads, sel.truncate, _progress=progress)


def default_selection() -> Selection:
    """What a new session sees before touching anything: the default model on its first example."""
    kind = PRESETS[DEFAULT_MODEL].kind if DEFAULT_MODEL in PRESETS else None
    if kind == "vit":
        name = examples.image_examples()[0]
        return Selection(DEFAULT_MODEL, kind, None, _example_bytes(name), name, "full")
    return Selection(DEFAULT_MODEL, kind, examples.TEXT_EXAMPLES[DEFAULT_EXAMPLE], None, None, "full")


def preload() -> None:
    """Load the default model and trace the default input, so the first page a browser opens draws at once.

    `attnscope app` runs this in a background thread while the server starts (the caches are per process)."""
    t0 = time.perf_counter()
    try:
        sel = default_selection()
        if sel.kind is None:
            get_model(sel.model_id)
        else:  # the trace, and the figures and modules the first page (the Model view) draws with
            from app.views.head_view import head_heatmap
            from app.views.model_grid import model_grid

            tr = _trace_of(sel, sel.variant)
            memo(tr, "model_grid", lambda: model_grid(tr))
            head_heatmap(tr, 0, 0)
        log.info("preloaded %s in %.1f s", sel.model_id, time.perf_counter() - t0)
    except Exception:  # the first page shows the same error to the user, in one line
        log.exception("preloading %s failed", DEFAULT_MODEL)


def preload_in_background() -> threading.Thread:
    thread = threading.Thread(target=preload, name="attnscope-preload", daemon=True)
    thread.start()
    return thread


def selection() -> Selection:
    """What the sidebar selected (drawn by app/main.py before the page runs)."""
    return st.session_state["selection"]


# -- widgets that keep their value ------------------------------------------------------------------
def kept(draw, label: str, *, key: str, default, **kwargs):
    """`draw(label, key=key, **kwargs)` — a Streamlit widget whose value survives the runs that do not draw it.

    Streamlit forgets a widget's value on every run that does not draw it (the Text box while a ViT is
    picked, Compare's fields while another page is open). A copy under another key puts it back.
    """
    copy = f"_kept_{key}"
    options = kwargs.get("options")
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(copy, default)
    if options is not None and st.session_state[key] not in list(options):
        st.session_state[key] = default
    value = draw(label, key=key, **kwargs)
    st.session_state[copy] = value
    return value


def sidebar() -> Selection:
    sb = st.sidebar
    sb.title("attnscope")
    names = list(PRESETS) + [CUSTOM]
    choice = kept(sb.selectbox, "Model", key="model", options=names,
                  default=DEFAULT_MODEL if DEFAULT_MODEL in names else names[0],
                  format_func=lambda n: n if n == CUSTOM else f"{n} ({PRESETS[n].kind})")
    model_id = kept(sb.text_input, "Model id or local folder", key="model_id", default="").strip() \
        if choice == CUSTOM else choice
    failed = False
    if choice in PRESETS:
        kind = PRESETS[choice].kind
    elif model_id:
        kind = _kind_of(model_id)
        failed = kind is None
    else:
        kind = None
    text = image_bytes = image_name = None
    truncate = False
    if kind == "vit":
        upload = sb.file_uploader("Image", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="upload",
                                  max_upload_size=MAX_UPLOAD_MB)
        if upload is not None:
            image_bytes, image_name = upload.getvalue(), upload.name
        else:
            options = examples.image_examples()
            image_name = kept(sb.selectbox, "or an example", key="image_example", options=options, default=options[0])
            image_bytes = _example_bytes(image_name)
    elif kind is not None:
        example = kept(sb.selectbox, "Example text", key="text_example", options=list(examples.TEXT_EXAMPLES),
                       default=DEFAULT_EXAMPLE)
        text = kept(sb.text_area, "Text", key=f"text_{example}", default=examples.TEXT_EXAMPLES[example], height=140)
        truncate = kept(sb.checkbox, "Truncate to the model's maximum length", key="truncate", default=False,
                        help="a longer text is cut at the end; the page says how many tokens were dropped")
    variant = variant_picker(sb, kind, key="variant")
    with sb.expander("Apply the variant to some layers/heads only"):
        layers = _indices(kept(st.text_input, "Layers (e.g. 0,1,5; empty = all)", key="layers", default=""), "layers")
        heads = _indices(kept(st.text_input, "Heads (empty = all)", key="heads", default=""), "heads")
    return Selection(model_id=model_id, kind=kind, text=text, image_bytes=image_bytes, image_name=image_name,
                     variant=variant, layers=layers, heads=heads, truncate=truncate, failed=failed)


def variant_picker(where, kind: str | None, key: str, label: str = "Variant", start: str | None = None) -> str:
    """A variant name plus one widget per parameter; returns the spec string (`name:p=v,...`).

    `start`: a spec to set the widgets to (the Mask lab starts from the sidebar's variant)."""
    names = [n for n, cls in REGISTRY.items() if kind is None or kind in cls.applies_to]
    if start is not None:
        _set_picker(key, start, names)
    name = kept(where.selectbox, label, key=f"{key}_name", options=names, default=names[0],
                help="attention variant; see the Mask lab page")
    values = []
    for p in REGISTRY[name].params:
        default = "auto" if p.default is None else p.default
        wkey = f"{key}_{name}_{p.name}"
        if p.type is bool:
            value = kept(where.checkbox, p.name, key=wkey, default=bool(default), help=p.doc)
        elif p.choices:
            value = kept(where.selectbox, p.name, key=wkey, options=list(p.choices), default=default, help=p.doc)
        else:
            value = kept(where.text_input, p.name, key=wkey, default=str(default), help=f"{p.doc} — {p.allowed()}")
        if str(value).lower() != str(default).lower():
            values.append(f"{p.name}={str(value).lower() if isinstance(value, bool) else value}")
    spec = name + (":" + ",".join(values) if values else "")
    try:  # a bad value is shown here; the trace is not run with it
        variant = parse_variant(spec)
    except VariantError as exc:
        where.error(str(exc))
        return "full"
    note = widening_note(variant)
    if note:
        where.caption(note)
    return spec


def _set_picker(key: str, spec: str, names: list[str]) -> None:
    """Set a picker's widgets (name and every parameter) to `spec`."""
    try:
        variant = parse_variant(spec)
    except VariantError:
        return
    if variant.name not in names:
        return
    st.session_state[f"{key}_name"] = variant.name
    for p in variant.params:
        value = variant.values[p.name]
        wkey = f"{key}_{variant.name}_{p.name}"
        if p.type is bool:
            st.session_state[wkey] = bool(value)
        elif p.choices:
            st.session_state[wkey] = value
        else:
            st.session_state[wkey] = "auto" if value is None else str(value)


def widening_note(variant) -> str | None:
    """A variant that deliberately lets queries see keys the model's own mask hides (prefix_lm) says so."""
    how = getattr(variant, "widens_mask", "")  # kernels: "" for every variant but prefix_lm
    return f"{variant.name}: {how}" if how else None


def _indices(raw: str, what: str) -> tuple[int, ...] | None:
    """'0,1,5' → (0, 1, 5); empty → None (every one). Anything else is one error, and the variant applies to all."""
    raw = (raw or "").strip()
    if not raw:
        return None
    parts = [x.strip() for x in raw.split(",")]
    if all(x.isdigit() for x in parts):
        return tuple(int(x) for x in parts)
    st.sidebar.error(f"{what} {raw!r} is not a list of numbers like 0,1,5 (leave it empty for all {what}); "
                     f"the variant applies to all {what}")
    return None


@st.cache_data(show_spinner=False)
def _example_bytes(name: str) -> bytes:
    buf = io.BytesIO()
    examples.load_image_example(name).save(buf, format="PNG")
    return buf.getvalue()


def _kind_of(model_id: str) -> str | None:
    try:
        with st.spinner(f"Loading {model_id}…"):
            return get_model(model_id).kind
    except Exception as exc:  # shown once, as one line
        show_error(exc)
        return None


# -- progress -----------------------------------------------------------------------------------------
class Progress:
    """A progress bar with a count and the time left, drawn on the first update (nothing flashes on a cache hit).

    Safe to call from inside a cached function: the updates run in the page's own context, so Streamlit does
    not record them for replay (the bar belongs to this run, not to the cached value).
    """

    def __init__(self, what: str, unit: str):
        self.what, self.unit = what, unit
        self.slot = st.empty()
        self.t0 = time.monotonic()
        self.outside = contextvars.copy_context()

    def __call__(self, done: int, total: int) -> None:
        """`done` of `total` units finished."""
        self.fraction(done / max(total, 1), f"{done}/{total} {self.unit}")

    def fraction(self, fraction: float, text: str) -> None:
        """A fraction finished, in words (the time left is estimated from the rate so far)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        elapsed = time.monotonic() - self.t0
        left = f" · about {_duration(elapsed / fraction * (1 - fraction))} left" if 0 < fraction < 1 else ""
        self.outside.run(self.slot.progress, fraction, text=f"{self.what}: {text}{left}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None or issubclass(kind, Exception):  # not on Stop or a rerun: the page is being torn down
            self.slot.empty()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# -- traces and models for the pages -------------------------------------------------------------------
def loaded_model(sel: Selection | None = None):
    """The selection's model, or None after one clear message (or none when the sidebar already showed one)."""
    sel = sel or selection()
    if sel.failed:
        return None
    if not sel.model_id or sel.kind is None:
        st.info("Pick a model in the sidebar.")
        return None
    try:
        with st.spinner(f"Loading {sel.model_id}…"):
            return get_model(sel.model_id)
    except Exception as exc:
        show_error(exc)
        return None


def traced(sel: Selection | None = None, *, variant: str | None = None):
    """The trace for the selection (optionally another variant), or None after one clear error."""
    sel = sel or selection()
    variant = variant or sel.variant
    if loaded_model(sel) is None:
        return None
    try:
        with Progress(f"Tracing {sel.model_id} with {variant}", "layers") as progress:
            return _trace_of(sel, variant, progress)
    except Exception as exc:
        show_error(exc)
        return None


def token_names(model_id: str):
    """Output id → its text, from the model's tokenizer (None when the model has none or is not loaded)."""
    try:
        tokenizer = getattr(get_model(model_id).adapter, "tokenizer", None)
    except Exception:
        return None
    return None if tokenizer is None else (lambda i: tokenizer.decode([i]))


def native_pattern(tr) -> str:
    """The model's own attention pattern in words ('every layer: global', 'layers 0–5: sliding window 4096; ...');
    empty when the trace does not record it."""
    from models.pattern import summarise

    return summarise(getattr(tr, "native", None))


def memo(trace, name: str, build):
    """`build()` once per trace object: derived figures and comparisons survive reruns with the trace."""
    cache = trace.__dict__.setdefault("_memo", {})
    if name not in cache:
        cache[name] = build()
    return cache[name]


def show_error(exc: Exception) -> None:
    """One red line: the message of an error phrased for the user (a UserError, or a ValueError raised by
    attnscope's own checks); for anything else no details, which may name server paths: they go to the log."""
    from kernels.errors import user_message

    msg = user_message(exc)
    if msg is None and isinstance(exc, ValueError) and _raised_here(exc):
        msg = str(exc)
    if msg is None:
        log.error("unexpected error in the app", exc_info=exc)
        msg = f"Something went wrong ({type(exc).__name__}); the server log has the details."
    st.error(msg)


def _raised_here(exc: BaseException) -> bool:
    """Whether the innermost frame of the error is attnscope's own code (not a library's)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return ROOT in path.parents and not any(p.name in (".venv", "site-packages") for p in path.parents)


def layer_head(tr) -> tuple[int, int]:
    """The layer and head chosen anywhere in the app, clamped to this trace."""
    layer = min(int(st.session_state.get("sel_layer", 0)), tr.n_layers - 1)
    head = min(int(st.session_state.get("sel_head", 0)), tr.n_heads - 1)
    return layer, head


def select(layer: int, head: int, page: str) -> None:
    """Make (layer, head) the shared choice; call before the page's layer/head inputs are drawn."""
    st.session_state["sel_layer"], st.session_state["sel_head"] = layer, head
    st.session_state[f"{page}_layer"], st.session_state[f"{page}_head"] = layer, head


def pick_layer_head(tr, page: str, where=st) -> tuple[int, int]:
    """Layer and head inputs of one page, bound to the choice shared by every page."""
    layer, head = layer_head(tr)
    for name, value, top in (("layer", layer, tr.n_layers), ("head", head, tr.n_heads)):
        key = f"{page}_{name}"
        if key not in st.session_state or st.session_state[key] >= top:  # first visit, or another model
            st.session_state[key] = value
    c1, c2 = where.columns(2)
    layer = int(c1.number_input("Layer", 0, tr.n_layers - 1, key=f"{page}_layer"))
    head = int(c2.number_input("Head", 0, tr.n_heads - 1, key=f"{page}_head"))
    st.session_state["sel_layer"], st.session_state["sel_head"] = layer, head
    return layer, head
