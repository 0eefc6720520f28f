"""Every change the adapters make to a model, recorded so that `undo(model)` puts it back as it was.

A user who hands attnscope a model object they hold (the Python API) gets it back untouched:
attention implementation, per-instance forwards, layer numbers, training mode.
"""

from __future__ import annotations

import torch

_LOG = "_attnscope_undo"
_MISSING = object()


def set_attr(model: torch.nn.Module, obj, name: str, value) -> None:
    """obj.name = value, remembered on `model` (the first value seen is the one restored)."""
    log = model.__dict__.setdefault(_LOG, [])
    log.append((obj, name, obj.__dict__.get(name, _MISSING) if hasattr(obj, "__dict__") else getattr(obj, name)))
    setattr(obj, name, value)


def eval_mode(model: torch.nn.Module) -> None:
    """model.eval(), remembering which modules were training."""
    training = [m for m in model.modules() if m.training]
    model.__dict__.setdefault(_LOG, []).append((None, "train", training))
    model.eval()


def set_attn_implementation(model: torch.nn.Module, implementation: str) -> None:
    """Switch every config of the model (sub-configs included) to `implementation`, restorable.

    Uses transformers' own `set_attn_implementation` where the model supports it, else sets the
    configs directly (families that bypass AttentionInterface still read it to build their mask).
    """
    for config in _configs(model):
        set_attr(model, config, "_attn_implementation_internal", config._attn_implementation_internal)
    if getattr(model, "_can_set_attn_implementation", lambda: False)():
        model.set_attn_implementation(implementation)
    else:
        for config in _configs(model):
            config._attn_implementation_internal = implementation


def undo(model: torch.nn.Module) -> None:
    """Put back everything the adapters changed on `model`, newest change first. Safe to call twice."""
    for obj, name, old in reversed(model.__dict__.pop(_LOG, [])):
        if obj is None:  # training mode
            model.eval()
            for m in old:
                m.training = True
        elif old is _MISSING:
            if name in obj.__dict__:
                delattr(obj, name)
        else:
            setattr(obj, name, old)


def _configs(model: torch.nn.Module) -> list:
    """Every config object reachable from the model's modules, each once."""
    seen: dict[int, object] = {}
    stack = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "sub_configs")]
    while stack:
        config = stack.pop()
        if id(config) in seen:
            continue
        seen[id(config)] = config
        stack.extend(c for key in config.sub_configs if (c := getattr(config, key, None)) is not None)
    return list(seen.values())
