"""The functions behind `import attnscope`: thin wrappers over the layers, for notebooks and scripts.

A `model` argument is what `attnscope.load` returned, or a transformers `PreTrainedModel` / timm
vision transformer the caller already holds (with `tokenizer=` or `image_processor=`): attnscope
attaches to it for the one call and leaves it exactly as it was (models/attach.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from analysis import compare as compare_traces
from analysis import quality
from app.views.catalog import ViewError, build_view, get_view
from kernels.variants import parse_variant
from models import tracer
from models.attach import attached
from models.inputs import read_image
from models.loaded import InputError
from models.recorder import DENSE_LIMIT
from models.trace import Trace

open_trace = Trace.load  # attnscope.open_trace(folder): a saved trace back, its arrays checked against the manifest


def trace(model, text: str | None = None, image=None, variant: str = "full", layers=None, heads=None,
          qk: bool = False, tokenizer=None, image_processor=None, *, max_tokens: int | None = None,
          dense_limit: int = DENSE_LIMIT) -> Trace:
    """One forward pass of `model` on a text or an image, with `variant` in `layers` and `heads` (default: all).

    image: a PIL image, a path to an image file, or an (H, W[, 3|4]) uint8 array. qk=True also keeps
    queries and keys (the neuron and qk views need them). max_tokens cuts a longer text; over
    `dense_limit` tokens the trace keeps pooled maps instead of N×N probabilities.
    """
    inputs = _inputs(text, image)
    with attached(model, tokenizer=tokenizer, image_processor=image_processor) as lm:
        return tracer.trace(lm, variant=variant, layers=_indices("layers", layers), heads=_indices("heads", heads),
                            qk=qk, max_tokens=max_tokens, dense_limit=dense_limit, **inputs)


@dataclass(frozen=True)
class Compared:
    """Two traces of one input, under variant a and variant b, and what changed from a to b."""

    a: Trace
    b: Trace
    stats: compare_traces.Comparison  # kl, js, mass_lost per (layer, head); output: the change in the output


def compare(model, text: str | None = None, variant_a: str = "full", variant_b: str | None = None, *, image=None,
            layers=None, heads=None, qk: bool = False, tokenizer=None, image_processor=None,
            max_tokens: int | None = None) -> Compared:
    """Trace one input under `variant_a` and `variant_b` (the model attached once) and compare the traces.

    `attnscope.view(result, "compare", layer=..., head=...)` draws both maps and their difference.
    """
    if variant_b is None:
        raise InputError("give variant_b, the variant to compare with variant_a (e.g. 'sliding_window:w=4')")
    for spec in (variant_a, variant_b):  # a bad second spec fails before the first trace runs
        parse_variant(spec)
    inputs = _inputs(text, image)
    options = dict(layers=_indices("layers", layers), heads=_indices("heads", heads), qk=qk, max_tokens=max_tokens,
                   **inputs)
    with attached(model, tokenizer=tokenizer, image_processor=image_processor) as lm:
        a = tracer.trace(lm, variant=variant_a, **options)
        b = tracer.trace(lm, variant=variant_b, **options)
    return Compared(a, b, compare_traces.compare(a, b))


def sweep(model, variants: str | list[str], *, text: str | None = None, images=None, limit: int | None = None,
          max_tokens: int | None = None, layers=None, attention: bool = True, tokenizer=None,
          image_processor=None) -> quality.SweepResult:
    """The quality lens: `full` and every variant point on the same inputs (analysis/quality.py says what
    each column means). `variants` takes grids: "sliding_window:w=32|64,sinks=0|4" is four points.

    Inputs: `text` (a language model reads it whole; an encoder reads one input per paragraph) or
    `images` (a list, each as `trace` takes it); by default the shipped text or the digits test split.
    `result.table()` is one dict per point; attention=False skips the attention statistics (faster).
    """
    if text is not None and images is not None:
        raise InputError("give text or images, not both")
    with attached(model, tokenizer=tokenizer, image_processor=image_processor) as lm:
        batches = None
        if text is not None:
            batches = quality.text_batches(lm, _text(text), limit=limit, max_tokens=max_tokens)
        elif images is not None:
            batches = quality.image_batches(lm, [_image(i)[0] for i in images], limit=limit)
        return quality.sweep(lm, variants, batches=batches, limit=limit, max_tokens=max_tokens,
                             layers=_indices("layers", layers), attention=attention)


def view(data, name: str, **selection) -> go.Figure:
    """The plotly Figure of catalogue view `name` (attnscope.VIEWS) for a trace, a `compare` result or
    a pair of traces, with a selection such as layer=2, head=5, query=3; what is not given takes the
    view's default, and a key the view does not read is refused."""
    keys = get_view(name).keys
    unknown = sorted(set(selection) - set(keys))
    if unknown:
        raise ViewError(f"the {name} view does not take {', '.join(unknown)}; it takes "
                        f"{', '.join(keys) or 'no selection'}")
    if isinstance(data, Compared):
        data = {"trace": data.a, "b": data.b}
    return build_view(name, data, selection)


def _inputs(text, image) -> dict:
    if (text is None) == (image is None):
        raise InputError("give exactly one input: text=... or image=...")
    if text is not None:
        return {"text": _text(text)}
    img, name = _image(image)
    return {"image": img, "image_name": name}


def _text(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"text must be a str, not {type(text).__name__}")
    return text


def _image(image):
    """(PIL image, name) from a PIL image, a path to an image file or an (H, W[, 3|4]) uint8 array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image, Path(image.filename).name if getattr(image, "filename", "") else None
    if isinstance(image, str | Path):
        return read_image(Path(image).expanduser())
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InputError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4) uint8, not {image.shape} "
                             f"{image.dtype}")
        return Image.fromarray(image), None
    raise InputError(f"image must be a PIL image, a path or a uint8 array, not {type(image).__name__}")


def _indices(what: str, values) -> list[int] | None:
    """None (every layer/head), one index, or a list of them."""
    if values is None:
        return None
    items = [values] if isinstance(values, int | np.integer) else values
    if not isinstance(items, list | tuple | range | np.ndarray) or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items
    ):
        raise InputError(f"{what} must be an index or a list of indices, not {values!r}")
    return [int(v) for v in items]
