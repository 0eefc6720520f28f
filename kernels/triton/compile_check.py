"""Compile the Triton kernels for a GPU target on a machine without one (Triton's frontend and the
NVIDIA backend's LLVM and ptxas ship in its wheel), so every variant's kernel form is checked to
build for a real card even where only the interpreter can run it.

  compile_forms(["sliding_window:w=64,sinks=4", ...]) -> [{"variant", "kernel", "seconds" | "error"}]

The launchers run as on a GPU up to the launch, which is captured and compiled instead. Must run in
a process where TRITON_INTERPRET is not set (the kernels are then JIT functions, not interpreted).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from functools import partial

import torch
import triton
from triton.backends.compiler import GPUTarget

from kernels.context import TokenContext
from kernels.triton import attention_fwd, maps
from kernels.variants import parse_variant

SM90 = GPUTarget("cuda", 90, 32)
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
          torch.int8: "i8", torch.int64: "i64", torch.bool: "i1"}


@contextmanager
def _captured(module, name: str):
    """Replace module.<name> (a kernel) by a recorder of its launches; no device check meanwhile."""
    calls, kernel, check = [], getattr(module, name), module._check_inputs

    class Launch:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((args, kw))

    setattr(module, name, Launch())
    module._check_inputs = lambda *a: None
    try:
        yield kernel, calls
    finally:
        setattr(module, name, kernel)
        module._check_inputs = check


def _source(kernel, args, kw) -> triton.compiler.ASTSource:
    signature, constexprs, values = {}, {}, iter(args)
    for param in kernel.params:
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", kw[param.name]
            continue
        v = next(values)
        if isinstance(v, torch.Tensor):
            signature[param.name] = "*" + _TYPES[v.dtype]
        elif isinstance(v, bool):
            signature[param.name] = "i1"
        elif isinstance(v, int):
            signature[param.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    return triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)


def _compile(kernel, launch, target) -> float:
    args, kw = launch
    options = {k: kw[k] for k in ("num_warps", "num_stages") if k in kw}
    t0 = time.perf_counter()
    triton.compile(_source(kernel, args, kw), target=target, options=options)
    return time.perf_counter() - t0


def compile_forms(specs, *, kinds=("causal", "vit"), target: GPUTarget = SM90, dtype=torch.bfloat16) -> list[dict]:
    """Compile the forward and the maps kernels for each variant's kernel form (on a causal sequence and
    a ViT grid with CLS, those of `kinds` the variant applies to); a row per (variant, context, kernel)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_forms needs TRITON_INTERPRET unset: run it in its own process")
    contexts = {"causal": TokenContext.sequence(256, causal=True).with_layer(0, 4),
                "vit": TokenContext.vit((14, 14), n_prefix=1).with_layer(0, 4)}
    rows = []
    for spec in specs:
        variant = parse_variant(spec)
        for kind, ctx in contexts.items():
            if kind not in kinds or kind not in variant.applies_to:
                continue
            q = torch.zeros(1, 4, ctx.n, 64, dtype=dtype)
            k = torch.zeros(1, 2, ctx.n, 64, dtype=dtype)
            launches = {
                "forward": (attention_fwd, "_attn_fwd", partial(
                    attention_fwd.triton_attention, q, k, k, scale=0.125, variant=variant, ctx=ctx, block_m=128,
                    block_n=64, sparse_block=128)),
                "maps": (maps, "_maps_kernel", partial(
                    maps.triton_maps, q, k, torch.zeros(1, 4, ctx.n), scale=0.125, ctx=ctx, variant=variant,
                    path_lse=torch.zeros(2, 1, 4, ctx.n))),
            }
            for name, (module, kernel_name, run) in launches.items():
                row = {"variant": spec, "context": kind, "kernel": name}
                try:
                    with _captured(module, kernel_name) as (kernel, calls):
                        run()
                    row["seconds"] = round(_compile(kernel, calls[0], target), 2)
                except Exception as exc:  # the row says what failed
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                rows.append(row)
    return rows
