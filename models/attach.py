"""Attach attnscope to a model object the user already holds, for one call, and leave it as it was.

`attached(model, tokenizer=..., image_processor=...)` wraps a transformers `PreTrainedModel` or a
timm ViT with the adapters `models.registry.load` uses and yields the `LoadedModel`. On exit, even
after an exception, `restored` puts back every instance attribute of the model's submodules and
configs as it was before: the attention implementation, train/eval mode, layer numbers, per-instance
forwards, hooks, whatever the adapter or the forward pass changed. The restore is a generic diff, so
it needs no update when an adapter starts to change something new.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from models.loaded import InputError, LoadedModel, ModelError

SOURCE = "object"  # LoadedModel.source of a model the user handed over
_ATTACHED: set[int] = set()  # ids of models attached right now
_LOCK = threading.Lock()


@contextmanager
def attached(model, *, tokenizer=None, image_processor=None) -> Iterator[LoadedModel]:
    """`model` as a LoadedModel for the duration of the block; a LoadedModel passes through as it is."""
    if isinstance(model, LoadedModel):
        if tokenizer is not None or image_processor is not None:
            raise InputError(f"{model.model_id} was loaded by attnscope and carries its own tokenizer or image "
                             "processor; drop tokenizer= and image_processor=")
        yield model
        return
    wrap = _wrapper(model, tokenizer, image_processor)  # checks only: nothing is changed yet
    with _exclusive(model), restored(model):
        yield wrap()


def _wrapper(model, tokenizer, image_processor) -> Callable[[], LoadedModel]:
    from models import hf_adapter, timm_adapter

    transformers = sys.modules.get("transformers")  # a transformers model exists only once it is imported
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        name = model.config._name_or_path or type(model).__name__
        revision = getattr(model.config, "_commit_hash", None)
        if hf_adapter.kind_of(model.config, model) == "vit":
            _refuse(name, tokenizer=tokenizer)
            if not hasattr(image_processor, "image_mean"):
                raise InputError(f"{name} is a vision model: pass its image processor, e.g. "
                                 "image_processor=AutoImageProcessor.from_pretrained(...)")
            process = hf_adapter.hf_image_processor(image_processor)
            return lambda: hf_adapter.wrap(model, name, SOURCE, image_processor=process, revision=revision)
        _refuse(name, image_processor=image_processor)
        if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise InputError(f"{name} is a language model: pass its tokenizer, e.g. "
                             "tokenizer=AutoTokenizer.from_pretrained(...)")
        return lambda: hf_adapter.wrap(model, name, SOURCE, tokenizer=tokenizer, revision=revision)
    if any(c.__module__.startswith("timm.") for c in type(model).__mro__):
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        # timm models take their image transform from their own data config
        _refuse(name, tokenizer=tokenizer, image_processor=image_processor)
        return lambda: timm_adapter.wrap(model, name, SOURCE)
    raise InputError(f"attnscope cannot trace a {type(model).__name__}; give it attnscope.load(...)'s result, "
                     "a transformers PreTrainedModel or a timm vision transformer")


def _refuse(name: str, **given) -> None:
    extra = [key for key, value in given.items() if value is not None]
    if extra:
        raise InputError(f"{name} does not use {' or '.join(extra)}; drop {'= and '.join(extra)}=")


@contextmanager
def _exclusive(model) -> Iterator[None]:
    """One call at a time per model: two overlapping restores would undo each other."""
    with _LOCK:
        if id(model) in _ATTACHED:
            raise ModelError(f"this {type(model).__name__} is being traced by another call; attnscope attaches to a "
                             "model object for one call at a time (load it with attnscope.load to share it)")
        _ATTACHED.add(id(model))
    try:
        yield
    finally:
        with _LOCK:
            _ATTACHED.discard(id(model))


@contextmanager
def restored(model: torch.nn.Module) -> Iterator[None]:
    """Put every submodule's and config's instance attributes back as they were on entry, even on an error."""
    saved = [_snapshot(obj) for obj in _stateful(model)]
    try:
        yield
    finally:
        for snap in saved:
            _restore(*snap)


def _stateful(model: torch.nn.Module) -> list:
    """The model's submodules and every config object they reach (configs nest sub-configs)."""
    objs = list(model.modules())
    seen = {id(o) for o in objs}
    todo = [getattr(m, "config", None) for m in objs]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "to_dict"):
            continue
        seen.add(id(cfg))
        objs.append(cfg)
        todo.extend(v for v in vars(cfg).values() if hasattr(v, "to_dict"))
    return objs


def _snapshot(obj) -> tuple:
    """Its attributes, and a copy of the containers among them that hold state in place
    (_modules, _parameters, _buffers, hook dicts, a config's lists and dicts)."""
    attrs = dict(vars(obj))
    return obj, attrs, {k: v.copy() for k, v in attrs.items() if isinstance(v, dict | set | list)}


def _restore(obj, attrs: dict, contents: dict) -> None:
    state = vars(obj)
    state.clear()
    state.update(attrs)
    for key, old in contents.items():
        container = attrs[key]
        container.clear()
        if isinstance(container, list):
            container.extend(old)
        else:
            container.update(old)
