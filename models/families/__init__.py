"""Model families whose attention bypasses transformers' AttentionInterface or timm's `Attention`.

Each gets a per-instance forward on its attention modules, as models/timm_adapter.py does for timm's
`Attention`: the module's own projections and position code (its own helpers, called, never copied),
with attnscope computing scores, softmax and values through `models.inject.run_attention`, and what
the module adds to its scores (ALiBi, a relative position bias) handed over as `NativeAttention`.

A family module defines:
    ATTENTION  the class of the attention modules it runs (transformers: class name; timm: module.Class)
    forward    the per-instance forward (same signature and return as the module's own), or
    install(model, modules)  where the hook belongs elsewhere (timm Swin: each block's `_attn`)
    describe(...) -> list[str]  per module, models.pattern phrases
               (transformers: describe(config, modules, kind); timm: describe(model, modules))
    refuse(config) -> str | None  (optional)  a configuration it does not reproduce, in words
    MASK       (optional, transformers) the mask implementation its model code needs, when not attnscope's lazy one
"""

from __future__ import annotations

import importlib
import types
from types import ModuleType

from models.loaded import ModelError

HF = {"bloom": "bloom", "falcon": "falcon", "mpt": "mpt", "gpt_neo": "gpt_neo"}  # by config.model_type
TIMM = {  # by attention class
    "timm.layers.attention.Attention": "timm_vit",
    "timm.models.eva.EvaAttention": "timm_eva",
    "timm.models.beit.Attention": "timm_beit",
    "timm.models.swin_transformer.WindowAttention": "timm_swin",
}


def hf_family(model_type: str) -> ModuleType | None:
    name = HF.get(model_type)
    return None if name is None else importlib.import_module(f"models.families.{name}")


def timm_family(module) -> ModuleType | None:
    name = TIMM.get(f"{type(module).__module__}.{type(module).__name__}")
    return None if name is None else importlib.import_module(f"models.families.{name}")


def install(model, family: ModuleType | None, modules: list) -> None:
    """Hook the family's attention modules (None: they call AttentionInterface) and number them."""
    if family is None:
        pass
    elif hasattr(family, "install"):
        family.install(model, modules)
    else:
        for m in modules:
            m.forward = types.MethodType(family.forward, m)
    for layer, m in enumerate(modules):
        m._attnscope_layer = layer


def check_all_hooked(model, hooked: list, family: str) -> None:
    """Refuse a model with an attention layer attnscope would not see (cross-attention, its own attention code).

    An attention-pooling head (SigLIP's) is not a layer over the tokens: it runs as the model's own code."""
    inside = {id(x) for m in hooked for x in m.modules()}
    inside |= {id(x) for m in model.modules() if "Pool" in type(m).__name__ for x in m.modules()}
    for name, module in model.named_modules():
        if "Attention" in type(module).__name__ and id(module) not in inside \
                and not any(id(x) in inside for x in module.modules()):
            raise ModelError(refusal(family, f"its attention module {name} ({type(module).__name__}) computes "
                                             "attention in code attnscope does not hook"))


def refusal(family: str, why: str) -> str:
    return f"model family {family!r} is not supported: {why}; see the model family table in the README"
