"""GPU benchmark of the Triton kernels, printing JSON (and writing it with --out).

  python -m bench.bench_triton            # N = 4k, 8k, 16k, 32k; head dim 64 and 128; bfloat16
  python -m bench.bench_triton --quick    # N = 4k and 16k, head dim 64 and 128
  python -m bench.bench_triton --out DIR  # also writes DIR/gpu_<card>_triton.json
  python -m bench.bench_triton --compile  # no GPU needed: every variant's kernel form compiled for sm_90
                                          # (written to bench/results/cpu_triton_compile_sm90.json)

Sections, every ratio against a baseline measured in the same process on the same GPU, each row naming
the variant family (`Variant.family`) its Triton-vs-FlexAttention ratio measures (bench/gpu_table.py
turns those into kernels/gpu_dispatch.json):
  dense          full, causal: Triton forward vs SDPA's flash backend vs FlexAttention (torch.compile)
  sliding_window sliding_window:w=256,sinks=4, causal, vs FlexAttention with the same mask
  block_sparse   a random block table (128-token blocks, ~10 % kept, causal) vs FlexAttention's BlockMask of it;
                 the Triton time includes its per-call block plan, as dispatch runs content variants
  window_2d      window_2d:M=8 on a ViT-like grid with a CLS token (about N tokens) vs FlexAttention
  score_mod      decay_1d vs the same kernel without the bias (and FlexAttention with the same score_mod)
  maps           the maps pass (pooled R=256 + row statistics) vs the forward pass
TFLOP/s count the two matmuls, 4·B·H·D per kept (i, j) pair. B·H keeps B·H·N = 8·16·4096 tokens·heads.
--budget S stops starting new shapes after S seconds (the row `stopped` says where).
Without CUDA it prints {"skipped": "no CUDA"} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

FLEX, TRITON = "flex_compiled", "triton"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 4096 and 16384 only")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles are slow)")
    parser.add_argument("--budget", type=float, default=None, help="seconds after which no new shape starts")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_<card>_triton.json")
    parser.add_argument("--compile", action="store_true", help="compile every kernel form for sm_90 (no GPU needed)")
    parser.add_argument("--form", action="append", help="with --compile: only this variant spec (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="no GPU: every section once on CPU at N=128 (interpreter)")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are first imported

    import torch

    if args.compile:
        return compile_report(args.form)
    if args.smoke:
        bench = Bench(128, 16, device="cpu", batch=1, heads=2)
        print(json.dumps({"bench": "triton_smoke", "sections": {name: [getattr(bench, name)()] for name in SECTIONS}}))
        return 0

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA"}))
        return 0
    import triton

    from kernels.gpu_table import card_slug

    t0 = time.perf_counter()
    _allow_recompiles(torch)
    sizes = (4096, 16384) if args.quick else (4096, 8192, 16384, 32768)
    dims = (64, 128)
    card = torch.cuda.get_device_name()
    report = {"bench": "triton_gpu", "device": card, "card": card_slug(card), "torch": torch.__version__,
              "triton": triton.__version__, "python": platform.python_version(), "dtype": "bfloat16",
              "sizes": list(sizes), "head_dims": list(dims), "quick": args.quick, "sections": {s: [] for s in SECTIONS}}
    shapes = [(n, d) for n in sizes for d in dims]
    for n, d in shapes:
        if args.budget is not None and time.perf_counter() - t0 > args.budget:
            report["stopped"] = f"budget of {args.budget:g} s reached before N={n}, head dim {d}"
            break
        bench = Bench(n, d, flex=not args.no_flex)
        for name in SECTIONS:
            report["sections"][name].append(getattr(bench, name)())
        del bench
        torch.cuda.empty_cache()
        report["seconds"] = round(time.perf_counter() - t0, 1)
        _write(report, args.out)  # after every shape: a run stopped at its time limit keeps what it measured
    print(json.dumps(report, indent=1))
    _write(report, args.out)
    return 0


def _write(report: dict, out: Path | None) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"gpu_{report['card']}_triton.json").write_text(json.dumps(report, indent=1) + "\n")


SECTIONS = ("dense", "sliding_window", "block_sparse", "window_2d", "score_mod", "maps")


def _allow_recompiles(torch) -> None:
    """Every (shape, mask) compiles its own FlexAttention kernel; past dynamo's default limit of 8 it would fall
    back to the eager path, which materialises every score (and runs out of memory at 32k)."""
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)


def compile_report(forms: list[str] | None = None) -> int:
    """Every registered variant with a kernel form (or `forms`), compiled (forward and maps) for sm_90; the
    full list is written to bench/results/."""
    import triton

    from kernels.triton.compile_check import compile_forms
    from kernels.triton.spec import SUPPORTED

    specs = forms or [{"document": "document:lengths=64;64", "head_ablation": "head_ablation:heads=0.1"}.get(n, n)
                      for n in SUPPORTED]
    rows = compile_forms(specs)
    report = {"bench": "triton_compile_sm90", "triton": triton.__version__,
              "target": "cuda sm_90 (no GPU: compiled only)", "compiled": sum("seconds" in r for r in rows),
              "failed": sum("error" in r for r in rows), "results": rows}
    text = json.dumps(report, indent=1)
    print(text)
    if forms is None:
        (Path(__file__).resolve().parent / "results" / "cpu_triton_compile_sm90.json").write_text(text + "\n")
    return 1 if report["failed"] else 0


class Bench:
    """One (N, head dim) shape: inputs, the timers and the baselines."""

    def __init__(self, n: int, d: int, flex: bool = True, *, device: str = "cuda", batch: int | None = None,
                 heads: int = 16):
        """device="cpu" (with TRITON_INTERPRET=1, tiny n, batch and heads) runs every section once untimed:
        the smoke test of this file (tests/test_gpu_check.py) before a GPU run."""
        import torch

        from kernels.context import TokenContext

        self.torch, self.dev = torch, device
        self.n, self.d, self.flex_on = n, d, flex
        self.heads = heads
        self.batch = batch or max(1, 8 * 4096 // n)
        g = torch.Generator(device=device).manual_seed(0)
        shape = (self.batch, self.heads, n, d)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.qkv = tuple(torch.randn(shape, device=device, dtype=dtype, generator=g) for _ in range(3))
        self.scale = d**-0.5
        self.causal = TokenContext.sequence(n, causal=True).with_layer(0, self.heads)

    # ------------------------------------------------------------------ timers
    def time_ms(self, fn) -> float:
        if self.dev != "cuda":  # the smoke run: once, untimed in any useful sense
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        from triton.testing import do_bench

        fn()  # compile / autotune outside the timing
        self.torch.cuda.synchronize()
        return float(do_bench(fn, warmup=25, rep=100))

    def tflops(self, ms: float, pairs: float) -> float:
        return 4.0 * self.batch * self.heads * pairs * self.d / (ms * 1e-3) / 1e12

    def case(self, name: str, make, pairs: float) -> dict:
        try:
            ms = self.time_ms(make())
            return {"name": name, "ms": round(ms, 4), "tflops": round(self.tflops(ms, pairs), 2)}
        except Exception as exc:  # one failing backend must not lose the others' numbers
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            return {"name": name, "error": f"{type(exc).__name__}: {first}"}

    def row(self, family: str, cases: list[dict], ours: str = TRITON, **extra) -> dict:
        return {"n": extra.pop("n", self.n), "head_dim": self.d, "batch": self.batch, "heads": self.heads,
                "family": family, **extra, "cases": cases, **_ratios(cases, ours)}

    # ------------------------------------------------------------------ the runs
    def triton_fn(self, variant, ctx, qkv=None, spec=None):
        from kernels.triton.attention_fwd import triton_attention

        q, k, v = qkv or self.qkv
        return lambda: triton_attention(q, k, v, scale=self.scale, variant=variant, ctx=ctx, spec=spec,
                                        out_dtype=q.dtype)

    def flex_fn(self, variant, ctx, qkv=None, mask_mod=None):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        from kernels.flex import combined_mask_mod

        q, k, v = qkv or self.qkv
        compiled = _compiled_flex(flex_attention) if self.dev == "cuda" else flex_attention
        ctx = ctx.to(self.dev)
        mask_mod = mask_mod or combined_mask_mod(variant, ctx)
        block_mask = None
        if mask_mod is not None:
            block_mask = create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2], device=self.dev)
        score_mod = variant.score_mod(ctx) if variant is not None else None
        return lambda: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=self.scale)

    def sdpa_fn(self, causal: bool):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q, k, v = self.qkv

        def run():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)

        return run

    def versus_flex(self, family, variant, ctx, pairs, qkv=None, **extra) -> dict:
        cases = [self.case(TRITON, lambda: self.triton_fn(variant, ctx, qkv), pairs)]
        if self.flex_on:
            cases.append(self.case(FLEX, lambda: self.flex_fn(variant, ctx, qkv), pairs))
        return self.row(family, cases, variant=variant.spec(), kept_fraction=round(pairs / ctx.n**2, 5), **extra)

    # ------------------------------------------------------------------ the sections
    def dense(self) -> dict:
        from kernels.variants import parse_variant

        full, pairs = parse_variant("full"), self.n * (self.n + 1) / 2
        cases = [self.case(TRITON, lambda: self.triton_fn(full, self.causal), pairs),
                 self.case("sdpa_flash", lambda: self.sdpa_fn(True), pairs)]
        if self.flex_on:
            cases.append(self.case(FLEX, lambda: self.flex_fn(full, self.causal), pairs))
        return self.row(full.family, cases, causal=True)

    def sliding_window(self) -> dict:
        from kernels.variants import parse_variant

        variant = parse_variant("sliding_window:w=256,sinks=4")
        pairs = kept_pairs(variant, self.causal.to(self.dev), self.n)
        return self.versus_flex(variant.family, variant, self.causal, pairs)

    def block_sparse(self) -> dict:
        import torch

        from kernels.kernel_form import KernelSpec

        blk, nb = 128, self.n // 128
        g = torch.Generator(device=self.dev).manual_seed(1)
        table = (torch.rand(nb, nb, device=self.dev, generator=g) < 0.1) | torch.eye(nb, dtype=torch.bool,
                                                                                   device=self.dev)
        table = table.tril()
        spec = KernelSpec.block_sparse(table, blk, causal=True)
        kept_blocks = table.sum() - table.diagonal().sum()
        pairs = float(kept_blocks) * blk * blk + nb * blk * (blk + 1) / 2
        mask_mod = lambda b, h, q_idx, kv_idx: table[q_idx // blk, kv_idx // blk] & (kv_idx <= q_idx)  # noqa: E731
        cases = [self.case(TRITON, lambda: self.triton_fn(None, self.causal, spec=spec), pairs)]
        if self.flex_on:
            cases.append(self.case(FLEX, lambda: self.flex_fn(None, self.causal, mask_mod=mask_mod), pairs))
        return self.row("content", cases, block=blk, kept_fraction=round(pairs / self.n**2, 5))

    def window_2d(self) -> dict:
        from kernels.context import TokenContext
        from kernels.variants import parse_variant

        side = max(8, 8 * round(self.n**0.5 / 8))  # a grid of windows of 8×8 patches, about N tokens
        ctx = TokenContext.vit((side, side), n_prefix=1).with_layer(0, self.heads)
        qkv = tuple(x[:, :, : ctx.n] if ctx.n <= self.n else x.repeat(1, 1, 2, 1)[:, :, : ctx.n].contiguous()
                    for x in self.qkv)
        variant = parse_variant("window_2d:M=8")
        return self.versus_flex(variant.family, variant, ctx, kept_pairs(variant, ctx.to(self.dev), ctx.n), qkv,
                                n=ctx.n, grid=[side, side])

    def score_mod(self) -> dict:
        from kernels.variants import parse_variant

        pairs = self.n * (self.n + 1) / 2
        decay, full = parse_variant("decay_1d"), parse_variant("full")
        cases = [self.case(TRITON, lambda: self.triton_fn(decay, self.causal), pairs),
                 self.case("triton_full", lambda: self.triton_fn(full, self.causal), pairs)]
        if self.flex_on:
            cases.append(self.case(FLEX, lambda: self.flex_fn(decay, self.causal), pairs))
        return self.row(decay.family, cases, variant=decay.spec(), causal=True)

    def maps(self) -> dict:
        from kernels.triton.attention_fwd import triton_attention
        from kernels.triton.maps import triton_maps
        from kernels.variants import parse_variant

        full, ctx = parse_variant("full"), self.causal
        q, k, v = self.qkv
        pairs = self.n * (self.n + 1) / 2

        def maps_fn():
            lse = triton_attention(q, k, v, scale=self.scale, variant=full, ctx=ctx).lse
            return lambda: triton_maps(q, k, lse, scale=self.scale, ctx=ctx, variant=full, pooled=256)

        cases = [self.case("maps_pass", maps_fn, pairs), self.case("forward", lambda: self.triton_fn(full, ctx), pairs)]
        return self.row(full.family, cases, "maps_pass", causal=True, pooled=256)


_FLEX = None


def _compiled_flex(flex_attention):
    global _FLEX
    if _FLEX is None:
        import torch

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def kept_pairs(variant, ctx, n: int) -> float:
    """Number of kept (i, j) pairs of the variant's mask AND causality, counted in query chunks."""
    from kernels.reference import allowed_fn

    dev = ctx.row.device
    keep = allowed_fn(variant, ctx, None, 1, 1, n, dev)
    total = 0
    for q0 in range(0, n, 1024):
        m = keep(q0, min(n, q0 + 1024))
        total += (min(n, q0 + 1024) - q0) * n if m is None else int(m.expand(1, 1, min(n, q0 + 1024) - q0, n).sum())
    return float(total)


def _ratios(cases: list[dict], ours: str) -> dict:
    """time(baseline) / time(ours) for every other case that ran: > 1 means ours is faster."""
    times = {c["name"]: c["ms"] for c in cases if "ms" in c}
    if ours not in times:
        return {}
    return {"speedup_vs": {name: round(ms / times[ours], 3) for name, ms in times.items() if name != ours}}


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "Bench", "kept_pairs"]
