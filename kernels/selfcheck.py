"""Runtime self-check of the Triton kernels on the device they run on.

The kernels are compiled per card, so one that compiles but computes wrong on some card would draw a
wrong picture with nobody told. The first time a kernel family (a variant's kernel form: its name,
e.g. `sliding_window`) runs with a dtype and head dim in this process, `verified` runs it on a small
random input of that family, dtype and head dim (the call's own context, cut to SMALL_N tokens when it
is a sequence) and compares the output, LSE and the maps pass (pooled maps, row statistics) with the
reference path. On a mismatch beyond tolerance, or an error, it warns once in one line and answers
False from then on, so the caller takes the reference path for that family in this process.
"""

from __future__ import annotations

import warnings

import torch

from kernels.context import TokenContext
from kernels.variants.base import Variant

SMALL_N = 384  # three 128-token tiles: full, partial and (for local masks) empty blocks
POOLED = 32
TOL = {torch.float16: 4e-3, torch.bfloat16: 2e-2, torch.float32: 2e-4}  # the gpu tests hold the kernels to these too
MAPS_TOL = {"pooled": (1e-6, 2e-2), "stats": (2e-3, 2e-2)}  # (atol, rtol); maps are float32 sums of p

_VERDICTS: dict[tuple, bool] = {}  # (family, dtype, head dim, device) -> passed


def verified(variant: Variant, ctx: TokenContext, dtype: torch.dtype, head_dim: int, device, run) -> bool:
    """Whether the Triton route `run(q, k, v, scale, ctx, variant, model_mask, sinks) -> AttnOut | None` agrees with
    the reference for this family, dtype and head dim on `device` (checked once per process)."""
    key = (variant.name, dtype, head_dim, str(device))
    if key not in _VERDICTS:
        _VERDICTS[key] = _check(variant, ctx, dtype, head_dim, device, run)
    return _VERDICTS[key]


def reset() -> None:
    """Forget every verdict (tests)."""
    _VERDICTS.clear()


def _check(variant, ctx, dtype, head_dim, device, run) -> bool:
    from kernels.maps import MapsSink
    from kernels.reference import attention

    what = f"{variant.name} ({str(dtype).removeprefix('torch.')}, head dim {head_dim})"
    heads = max(1, ctx.n_heads)
    # the call's own context when it is a grid or a short sequence, or when the variant refuses the cut one
    contexts = [ctx] if ctx.grid is not None or ctx.n <= SMALL_N else [ctx.truncated(SMALL_N), ctx]
    for small in contexts:
        small, n = small.to(device), small.n
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, heads, n, head_dim, generator=g, device=device).to(dtype) for _ in range(3))
        scale = head_dim**-0.5
        sinks = [MapsSink(1, heads, n, n, small, pooled=min(POOLED, n), device=device) for _ in range(2)]
        try:
            got = run(q, k, v, scale, small, variant, None, (sinks[0],))
        except Exception as exc:  # a kernel that fails to compile or launch here is as unusable as a wrong one
            return _refuse(f"the Triton kernel {what} failed on this device: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}")
        if got is not None:
            break
    else:
        return False  # no kernel form for this context: the caller takes the reference anyway
    ref = attention(q, k, v, scale=scale, ctx=small, variant=variant, sinks=(sinks[1],))
    live = ~ref.empty
    tol = TOL.get(dtype, TOL[torch.float32])
    parts = [("output", got.out.float(), ref.out, (tol, tol)), ("lse", got.lse[live], ref.lse[live], (tol, tol)),
             ("pooled maps", sinks[0].pooled(), sinks[1].pooled(), MAPS_TOL["pooled"])]
    parts += [(name, sinks[0].stats[name], value, MAPS_TOL["stats"]) for name, value in sinks[1].stats.items()]
    worst = None
    for name, a, b, (atol, rtol) in parts:
        a, b = a.float(), b.float()
        err = float((a - b).abs().nan_to_num(float("inf")).max()) if a.numel() else 0.0
        if a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=rtol):
            if worst is None or err > worst[1]:
                worst = (name, err)
    if not torch.equal(got.empty, ref.empty):
        worst = worst or ("empty rows", float("inf"))
    if worst is None:
        return True
    return _refuse(f"the Triton kernel {what} disagrees with the reference on this device "
                   f"(max error {worst[1]:.3g} in the {worst[0]})")


def _refuse(reason: str) -> bool:
    warnings.warn(f"attnscope: {reason}; using the reference path for it in this process", RuntimeWarning,
                  stacklevel=4)
    return False
