"""Streamlit wiring shared by the pages: the sidebar, cached models and cached traces."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import streamlit as st

from app import examples
from models.registry import PRESETS

DEFAULT_MODEL = os.environ.get("ATTNSCOPE_MODEL", "minilm")
CUSTOM = "other (type an id or folder)"


@dataclass
class Selection:
    model_id: str
    kind: str
    text: str | None
    image_bytes: bytes | None
    image_name: str | None
    variant: str

    @property
    def key(self) -> str:
        h = hashlib.sha256()
        h.update((self.text or "").encode("utf-8", "surrogatepass"))
        h.update(self.image_bytes or b"")
        return h.hexdigest()


@st.cache_resource(show_spinner=False, max_entries=4)
def get_model(model_id: str):
    from models.registry import load

    return load(model_id)


@st.cache_data(show_spinner=False, max_entries=32)
def get_trace(model_id: str, input_key: str, text: str | None, image_bytes: bytes | None,
              image_name: str | None, variant: str, qk: bool = False):
    """Traces are cached by (model, input, variant): changing layer, head or page never re-runs the model."""
    from models.inputs import open_image
    from models.tracer import trace

    lm = get_model(model_id)
    image = open_image(image_bytes, image_name or "upload") if image_bytes is not None else None
    return trace(lm, text=text, image=image, image_name=image_name, variant=variant, qk=qk)


def sidebar() -> Selection:
    sb = st.sidebar
    sb.title("attnscope")
    names = list(PRESETS) + [CUSTOM]
    choice = sb.selectbox("Model", names, index=names.index(DEFAULT_MODEL) if DEFAULT_MODEL in names else 0,
                          format_func=lambda n: n if n == CUSTOM else f"{n} ({PRESETS[n].kind})")
    model_id = sb.text_input("Model id or local folder", "") if choice == CUSTOM else choice
    kind = PRESETS[choice].kind if choice in PRESETS else None
    if kind is None and model_id:
        kind = _kind_of(model_id)
    text = image_bytes = image_name = None
    if kind == "vit":
        upload = sb.file_uploader("Image", type=["png", "jpg", "jpeg", "bmp", "gif", "webp"])
        if upload is not None:
            image_bytes, image_name = upload.getvalue(), upload.name
        else:
            image_name = sb.selectbox("or an example", examples.image_examples())
            image_bytes = _example_bytes(image_name)
    elif kind is not None:
        example = sb.selectbox("Example text", list(examples.TEXT_EXAMPLES))
        text = sb.text_area("Text", examples.TEXT_EXAMPLES[example], height=140)
    variant = sb.text_input("Variant", "full", help="`name` or `name:param=value,...`; see `attnscope variants`")
    return Selection(model_id=model_id, kind=kind, text=text, image_bytes=image_bytes,
                     image_name=image_name, variant=variant.strip() or "full")


@st.cache_data(show_spinner=False)
def _example_bytes(name: str) -> bytes:
    import io

    buf = io.BytesIO()
    examples.load_image_example(name).save(buf, format="PNG")
    return buf.getvalue()


def _kind_of(model_id: str) -> str | None:
    try:
        return get_model(model_id).kind
    except Exception as exc:  # shown once, as one line
        show_error(exc)
        return None


def traced(sel: Selection, qk: bool = False):
    """The trace for the sidebar's selection, with progress, or None after showing one clear error."""
    if not sel.model_id or sel.kind is None:
        st.info("Pick a model in the sidebar.")
        return None
    try:
        with st.spinner(f"Loading {sel.model_id}…"):
            get_model(sel.model_id)
        with st.spinner(f"Tracing {sel.model_id} with {sel.variant}…"):
            return get_trace(sel.model_id, sel.key, sel.text, sel.image_bytes, sel.image_name, sel.variant, qk)
    except Exception as exc:
        show_error(exc)
        return None


def show_error(exc: Exception) -> None:
    from app.cli import _friendly

    msg = _friendly(exc)
    st.error(msg if msg is not None else f"{type(exc).__name__}: {exc}")
