"""GPU benchmark of the Triton kernels, printing JSON.

  python -m bench.bench_triton            # N = 4k, 8k, 16k, 32k; head dim 64 and 128; bfloat16
  python -m bench.bench_triton --quick    # N = 4k only, head dim 64
  python -m bench.bench_triton --compile  # no GPU needed: every variant's kernel form compiled for sm_90
                                          # (written to bench/results/cpu_triton_compile_sm90.json)

Sections, every ratio against a baseline measured in the same process on the same GPU:
  dense        Triton forward vs SDPA's flash backend vs FlexAttention (torch.compile), causal and not
  block_sparse sliding window (w=256, 4 sinks, causal) vs FlexAttention with the same mask
  score_mod    decay_1d vs the same kernel without the bias (and FlexAttention with the same score_mod)
  maps         the maps pass (pooled R=256 + row statistics) vs the forward pass
TFLOP/s count the two matmuls, 4·B·H·N²·D (halved when causal); for sparse masks the count of
kept (i, j) pairs replaces N². B·H keeps B·H·N = 8·16·4096 tokens·heads, enough to fill an H100.
Without CUDA it prints {"skipped": "no CUDA"} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 4096 and head dim 64 only")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles are slow)")
    parser.add_argument("--compile", action="store_true", help="compile every kernel form for sm_90 (no GPU needed)")
    args = parser.parse_args(argv)

    import torch

    if args.compile:
        return compile_report()

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA"}))
        return 0
    sizes = (4096,) if args.quick else (4096, 8192, 16384, 32768)
    dims = (64,) if args.quick else (64, 128)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "dtype": "bfloat16", "sizes": list(sizes), "head_dims": list(dims)}
    import triton

    report["triton"] = triton.__version__
    report["dense"], report["block_sparse"], report["score_mod"], report["maps"] = [], [], [], []
    for d in dims:
        for n in sizes:
            bench = Bench(n, d, flex=not args.no_flex)
            report["dense"] += bench.dense()
            report["block_sparse"].append(bench.block_sparse())
            report["score_mod"].append(bench.score_mod())
            report["maps"].append(bench.maps())
            del bench
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=1))
    return 0


def compile_report() -> int:
    """Every registered variant with a kernel form, compiled (forward and maps) for an H100's sm_90."""
    from pathlib import Path

    import triton

    from kernels.triton.compile_check import compile_forms
    from kernels.triton.spec import SUPPORTED

    specs = [{"document": "document:lengths=64;64", "head_ablation": "head_ablation:heads=0.1"}.get(n, n)
             for n in SUPPORTED]
    rows = compile_forms(specs)
    report = {"bench": "triton_compile_sm90", "triton": triton.__version__,
              "target": "cuda sm_90 (no GPU: compiled only)", "compiled": sum("seconds" in r for r in rows),
              "failed": sum("error" in r for r in rows), "results": rows}
    text = json.dumps(report, indent=1)
    print(text)
    (Path(__file__).resolve().parent / "results" / "cpu_triton_compile_sm90.json").write_text(text + "\n")
    return 1 if report["failed"] else 0


class Bench:
    """One (N, head dim) shape: inputs, the timers and the baselines."""

    def __init__(self, n: int, d: int, flex: bool = True):
        import torch

        from kernels.context import TokenContext

        self.torch = torch
        self.n, self.d, self.flex_on = n, d, flex
        self.heads = 16
        self.batch = max(1, 8 * 4096 // n)
        g = torch.Generator(device="cuda").manual_seed(0)
        shape = (self.batch, self.heads, n, d)
        self.q, self.k, self.v = (
            torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)
        )
        self.scale = d**-0.5
        self.ctx = {c: TokenContext.sequence(n, causal=c).with_layer(0, self.heads) for c in (False, True)}

    # ------------------------------------------------------------------ timers
    def time_ms(self, fn) -> float:
        from triton.testing import do_bench

        fn()  # compile / autotune outside the timing
        self.torch.cuda.synchronize()
        return float(do_bench(fn, warmup=25, rep=100))

    def tflops(self, ms: float, pairs: float) -> float:
        return 4.0 * self.batch * self.heads * pairs * self.d / (ms * 1e-3) / 1e12

    def case(self, name: str, fn, pairs: float) -> dict:
        try:
            ms = self.time_ms(fn)
            return {"name": name, "ms": round(ms, 4), "tflops": round(self.tflops(ms, pairs), 2)}
        except Exception as exc:  # one failing backend must not lose the others' numbers
            return {"name": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}

    # ------------------------------------------------------------------ the runs
    def triton_fn(self, variant, causal: bool):
        from kernels.triton.attention_fwd import triton_attention

        ctx = self.ctx[causal]
        return lambda: triton_attention(self.q, self.k, self.v, scale=self.scale, variant=variant, ctx=ctx,
                                        out_dtype=self.torch.bfloat16)

    def flex_fn(self, variant, causal: bool):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        from kernels.flex import combined_mask_mod

        compiled = _compiled_flex(flex_attention)
        ctx = self.ctx[causal].to("cuda")
        mask_mod = combined_mask_mod(variant, ctx)
        block_mask = None
        if mask_mod is not None:
            block_mask = create_block_mask(mask_mod, None, None, self.n, self.n, device="cuda")
        score_mod = variant.score_mod(ctx)
        return lambda: compiled(self.q, self.k, self.v, score_mod=score_mod, block_mask=block_mask, scale=self.scale)

    def sdpa_fn(self, causal: bool):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=causal, scale=self.scale)

        return run

    def shape(self) -> dict:
        return {"n": self.n, "head_dim": self.d, "batch": self.batch, "heads": self.heads}

    def dense(self) -> list[dict]:
        from kernels.variants import parse_variant

        full = parse_variant("full")
        rows = []
        for causal in (False, True):
            pairs = self.n * (self.n + 1) / 2 if causal else float(self.n) ** 2
            cases = [self.case("triton", self.triton_fn(full, causal), pairs),
                     self.case("sdpa_flash", self.sdpa_fn(causal), pairs)]
            if self.flex_on:
                cases.append(self.case("flex_compiled", self.flex_fn(full, causal), pairs))
            rows.append({**self.shape(), "causal": causal, "cases": cases, **_ratios(cases, "triton")})
        return rows

    def block_sparse(self) -> dict:
        from kernels.triton.attention_fwd import prepare
        from kernels.variants import parse_variant

        variant = parse_variant("sliding_window:w=256,sinks=4")
        pairs = kept_pairs(variant, self.ctx[True], self.n)
        prep = prepare(self.q, self.k, variant=variant, ctx=self.ctx[True])
        cases = [self.case("triton", self.triton_fn(variant, True), pairs)]
        if self.flex_on:
            cases.append(self.case("flex_compiled", self.flex_fn(variant, True), pairs))
        return {**self.shape(), "variant": variant.spec(), "kept_fraction": round(pairs / self.n**2, 5),
                "tiles_visited": round(prep.block_mask.visited_fraction(), 5), "cases": cases,
                **_ratios(cases, "triton")}

    def score_mod(self) -> dict:
        from kernels.variants import parse_variant

        pairs = self.n * (self.n + 1) / 2
        decay, full = parse_variant("decay_1d"), parse_variant("full")
        cases = [self.case("triton_decay_1d", self.triton_fn(decay, True), pairs),
                 self.case("triton_full", self.triton_fn(full, True), pairs)]
        if self.flex_on:
            cases.append(self.case("flex_decay_1d", self.flex_fn(decay, True), pairs))
        return {**self.shape(), "causal": True, "cases": cases, **_ratios(cases, "triton_decay_1d")}

    def maps(self) -> dict:
        from kernels.triton.attention_fwd import triton_attention
        from kernels.triton.maps import triton_maps
        from kernels.variants import parse_variant

        full, ctx = parse_variant("full"), self.ctx[True]
        pairs = self.n * (self.n + 1) / 2
        lse = triton_attention(self.q, self.k, self.v, scale=self.scale, variant=full, ctx=ctx).lse
        run_maps = lambda: triton_maps(self.q, self.k, lse, scale=self.scale, ctx=ctx, variant=full,  # noqa: E731
                                       pooled=256)
        cases = [self.case("maps_pass", run_maps, pairs), self.case("forward", self.triton_fn(full, True), pairs)]
        return {**self.shape(), "causal": True, "pooled": 256, "cases": cases, **_ratios(cases, "maps_pass")}


_FLEX = None


def _compiled_flex(flex_attention):
    global _FLEX
    if _FLEX is None:
        import torch

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def kept_pairs(variant, ctx, n: int) -> float:
    """Number of kept (i, j) pairs of the variant's mask AND causality, counted in query chunks."""
    import torch

    from kernels.reference import allowed_fn

    keep = allowed_fn(variant, ctx.to("cuda"), None, 1, 1, n, torch.device("cuda"))
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
