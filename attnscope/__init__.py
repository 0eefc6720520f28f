"""attnscope from Python: trace a model, draw any view of the app as a plotly Figure.

    import attnscope
    lm = attnscope.load("minilm")                      # a preset, hub id, folder, .gguf file or timm name
    tr = attnscope.trace(lm, text="The cat sat on the mat.", qk=True)
    tr.attention(2)                                    # (heads, N, N) probabilities of layer 2
    attnscope.view(tr, "head", layer=2, head=5)        # renders inline in Jupyter

`trace`, `compare` and `sweep` also take a transformers PreTrainedModel or a timm ViT you already hold
(`attnscope.trace(model, tokenizer=tok, text=...)`): attnscope attaches to it for the call and leaves
it exactly as it was. Every error meant for you is an `attnscope.UserError` with a one-line message.

The surface (stable):
    load(id_or_path)                         -> LoadedModel
    trace(model, text=|image=, variant="full", layers=None, heads=None, qk=False,
          tokenizer=None, image_processor=None)                          -> Trace
    compare(model, text, variant_a, variant_b)                           -> Compared (.a, .b, .stats)
    sweep(model, variants, text=|images=)                                -> SweepResult (.table())
    view(trace | compared | (a, b), name, **selection)                   -> plotly Figure
    open_trace(folder), Trace.save(folder)
    Trace: attention(layer), pooled(layer), q(layer), k(layer), lse(layer), stat(layer, name), logits
    VIEWS: the view names; UserError: the base of every one-line error

Heavy imports (torch, transformers, plotly) happen on first use, so `import attnscope` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kernels.errors import UserError

if TYPE_CHECKING:
    from app.views.catalog import VIEWS
    from attnscope.api import Compared, compare, open_trace, sweep, trace, view
    from models.registry import load
    from models.trace import Trace

_LAZY = {
    "load": "models.registry",
    "trace": "attnscope.api",
    "compare": "attnscope.api",
    "Compared": "attnscope.api",
    "sweep": "attnscope.api",
    "view": "attnscope.api",
    "open_trace": "attnscope.api",
    "Trace": "models.trace",
    "VIEWS": "app.views.catalog",
}
__all__ = ["load", "trace", "compare", "Compared", "sweep", "view", "open_trace", "Trace", "VIEWS", "UserError"]
assert set(__all__) == {"UserError", *_LAZY}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attnscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
