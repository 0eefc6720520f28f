"""Estimate what a trace will hold before running it, and the budget it must fit in."""

from __future__ import annotations

import os

GB = 1024**3
CHUNK = 256  # query rows the reference path holds at once


def budget_bytes() -> int:
    """ATTNSCOPE_MEMORY_BUDGET_GB, else half of the memory available now."""
    env = os.environ.get("ATTNSCOPE_MEMORY_BUDGET_GB")
    if env:
        return int(float(env) * GB)
    import psutil

    return psutil.virtual_memory().available // 2


def require(need: int, what: str) -> None:
    """Refuse, in one line and before any work, a request whose estimated memory is over the budget."""
    from models.loaded import InputError

    budget = budget_bytes()
    if need > budget:
        raise InputError(f"{what} needs about {need / GB:.1f} GB but the memory budget is {budget / GB:.1f} GB; "
                         "use a shorter input or fewer inputs, or raise ATTNSCOPE_MEMORY_BUDGET_GB")


def estimate_bytes(lm, n: int, *, dense: bool, qk: bool, pooled: int = 256) -> int:
    """Bytes the recorded arrays and the working set of one traced forward pass need (float32)."""
    L, H = lm.n_layers, lm.n_heads
    head_dim = _head_dim(lm)
    per_layer = H * n * 4 * 5  # LSE and four row statistics
    per_layer += H * n * n * 4 if dense else H * min(pooled, n) ** 2 * 4
    if qk:
        per_layer += 2 * H * n * head_dim * 4
    hidden = getattr(getattr(lm.module, "config", None), "hidden_size", 1024)
    working = 6 * H * min(CHUNK, n) * n * 4  # scores, probabilities and temporaries of one chunk
    activations = 16 * n * hidden * 4  # the model's own activations, roughly
    return L * per_layer + working + activations


def _head_dim(lm) -> int:
    config = getattr(lm.module, "config", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    return getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else 64)
