"""Streamlit wiring shared by the pages: the sidebar, cached models and cached traces.

The sidebar is drawn once by app/main.py for every page, so the model, input and variant
stay the same while the user moves between pages; pages read them with `selection()`.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import streamlit as st

from app import examples
from kernels.variants import REGISTRY, VariantError, parse_variant
from models.registry import PRESETS

DEFAULT_MODEL = os.environ.get("ATTNSCOPE_MODEL", "minilm")
CUSTOM = "other (type an id or folder)"
MAX_UPLOAD_MB = 20


@dataclass(frozen=True)
class Selection:
    model_id: str
    kind: str | None
    text: str | None
    image_bytes: bytes | None
    image_name: str | None
    variant: str
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    truncate: bool = False  # cut a text longer than the model takes (the trace notes how many tokens went)

    @property
    def key(self) -> str:
        """A digest of the input, so cached traces are keyed by content, not by widget state."""
        h = hashlib.sha256()
        h.update((self.text or "").encode("utf-8", "surrogatepass"))
        h.update(self.image_bytes or b"")
        return h.hexdigest()

    def with_variant(self, variant: str) -> Selection:
        from dataclasses import replace

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
              truncate: bool = False):
    """Traces are cached by (model, input, variant): changing layer, head or page never re-runs the model."""
    from models.inputs import open_image
    from models.tracer import trace

    lm = get_model(model_id)
    image = open_image(image_bytes, image_name or "upload") if image_bytes is not None else None
    return trace(lm, text=text, image=image, image_name=image_name, variant=variant, qk=qk,
                 max_tokens=lm.max_tokens if truncate and text is not None else None,
                 layers=list(layers) if layers is not None else None,
                 heads=list(heads) if heads is not None else None)


def selection() -> Selection:
    """What the sidebar selected (drawn by app/main.py before the page runs)."""
    return st.session_state["selection"]


def sidebar() -> Selection:
    sb = st.sidebar
    sb.title("attnscope")
    names = list(PRESETS) + [CUSTOM]
    choice = sb.selectbox("Model", names, index=names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0,
                          format_func=lambda n: n if n == CUSTOM else f"{n} ({PRESETS[n].kind})", key="model")
    model_id = sb.text_input("Model id or local folder", "", key="model_id") if choice == CUSTOM else choice
    kind = PRESETS[choice].kind if choice in PRESETS else (_kind_of(model_id) if model_id else None)
    text = image_bytes = image_name = None
    truncate = False
    if kind == "vit":
        upload = sb.file_uploader("Image", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"], key="upload",
                                  max_upload_size=MAX_UPLOAD_MB)
        if upload is not None:
            image_bytes, image_name = upload.getvalue(), upload.name
        else:
            image_name = sb.selectbox("or an example", examples.image_examples(), key="image_example")
            image_bytes = _example_bytes(image_name)
    elif kind is not None:
        example = sb.selectbox("Example text", list(examples.TEXT_EXAMPLES), key="text_example")
        text = sb.text_area("Text", examples.TEXT_EXAMPLES[example], height=140, key=f"text_{example}")
        truncate = sb.checkbox("Truncate to the model's maximum length", key="truncate",
                               help="a longer text is cut at the end; the page says how many tokens were dropped")
    variant = variant_picker(sb, kind, key="variant")
    layers = heads = None
    with sb.expander("Apply the variant to some layers/heads only"):
        layers = _indices(st.text_input("Layers (e.g. 0,1,5; empty = all)", key="layers"), "layers")
        heads = _indices(st.text_input("Heads (empty = all)", key="heads"), "heads")
    return Selection(model_id=model_id, kind=kind, text=text, image_bytes=image_bytes, image_name=image_name,
                     variant=variant, layers=layers, heads=heads, truncate=truncate)


def variant_picker(where, kind: str | None, key: str, label: str = "Variant") -> str:
    """A variant name plus one widget per parameter; returns the spec string (`name:p=v,...`)."""
    names = [n for n, cls in REGISTRY.items() if kind is None or kind in cls.applies_to]
    name = where.selectbox(label, names, key=f"{key}_name", help="attention variant; see the Mask lab page")
    values = []
    for p in REGISTRY[name].params:
        default = "auto" if p.default is None else p.default
        wkey = f"{key}_{name}_{p.name}"
        if p.type is bool:
            value = where.checkbox(p.name, bool(default), key=wkey, help=p.doc)
        elif p.choices:
            value = where.selectbox(p.name, list(p.choices), index=list(p.choices).index(default), key=wkey,
                                    help=p.doc)
        else:
            value = where.text_input(p.name, str(default), key=wkey, help=f"{p.doc} — {p.allowed()}")
        if str(value).lower() != str(default).lower():
            values.append(f"{p.name}={str(value).lower() if isinstance(value, bool) else value}")
    spec = name + (":" + ",".join(values) if values else "")
    try:  # a bad value is shown here; the trace is not run with it
        parse_variant(spec)
    except VariantError as exc:
        where.error(str(exc))
        return "full"
    return spec


def _indices(raw: str, what: str) -> tuple[int, ...] | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return tuple(int(x) for x in raw.replace(" ", "").split(",") if x)
    except ValueError:
        st.error(f"{what} must be comma-separated numbers like 0,1,5; using all {what}")
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


def traced(sel: Selection | None = None, *, variant: str | None = None):
    """The trace for the selection (optionally another variant), or None after one clear error.

    Every page asks for the same trace (q and k included), so moving between pages never re-runs the model.
    """
    sel = sel or selection()
    if not sel.model_id or sel.kind is None:
        st.info("Pick a model in the sidebar.")
        return None
    variant = variant or sel.variant
    try:
        with st.spinner(f"Loading {sel.model_id}…"):
            get_model(sel.model_id)
        with st.spinner(f"Tracing {sel.model_id} with {variant}…"):
            return get_trace(sel.model_id, sel.key, sel.text, sel.image_bytes, sel.image_name, variant, True,
                             sel.layers, sel.heads, sel.truncate)
    except Exception as exc:
        show_error(exc)
        return None


def memo(trace, name: str, build):
    """`build()` once per trace object: derived figures and comparisons survive reruns with the trace."""
    cache = trace.__dict__.setdefault("_memo", {})
    if name not in cache:
        cache[name] = build()
    return cache[name]


def show_error(exc: Exception) -> None:
    from kernels.errors import user_message

    msg = user_message(exc)
    st.error(msg if msg is not None else f"{type(exc).__name__}: {exc}")


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
