"""CPU benchmarks of issue 4, printing JSON.

  python -m bench.bench_cpu model     # smollm2-135m: attnscope trace vs eager+output_attentions vs SDPA
  python -m bench.bench_cpu variants  # attention time of each variant vs dense SDPA and FlexAttention

Each model case runs in a fresh subprocess so its peak RSS is its own; ratios compare cases of
the same invocation on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = (512, 2048, 8192)
GB = 1024**3


def long_text(lm, n: int) -> str:
    from models.calibrate import CALIBRATION_TEXT

    para = CALIBRATION_TEXT.read_text()
    text = para
    while len(lm.encode_text(text).tokens) < n:
        text += "\n\n" + para
    return text


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # ru_maxrss is in KiB on Linux


def model_case(case: str, n: int) -> dict:
    """One (case, N) measurement in this process: load, warm up, time one forward."""
    import torch

    from models.registry import load
    from models.tracer import encode, trace

    lm = load("smollm2-135m")
    text = long_text(lm, n)
    rss_loaded = peak_rss_gb()
    enc = encode(lm, text=text, max_tokens=n)
    if case == "attnscope":
        trace(lm, text="warm up", max_tokens=n)
        t0 = time.perf_counter()
        tr = trace(lm, text=text, max_tokens=n)
        seconds = time.perf_counter() - t0
        kept = sorted({k.split("_", 1)[1] for k in tr.arrays if k.startswith("L0_")})
        extra = {"arrays_per_layer": kept, "trace_mb": round(sum(a.nbytes for a in tr.arrays.values()) / 2**20, 1)}
    else:
        lm.module.set_attn_implementation("eager" if case == "eager" else "sdpa")
        with torch.no_grad():
            lm.module(input_ids=enc.inputs["input_ids"][:, :8])  # warm up
            t0 = time.perf_counter()
            out = lm.module(**enc.inputs, output_attentions=case == "eager", logits_to_keep=1)
            seconds = time.perf_counter() - t0
        extra = {}
        if case == "eager":
            extra["attention_tensors_gb"] = round(sum(a.numel() * a.element_size() for a in out.attentions) / GB, 2)
    return {"case": case, "n": n, "seconds": round(seconds, 3), "peak_rss_gb": round(peak_rss_gb(), 3),
            "rss_after_load_gb": round(rss_loaded, 3), **extra}


def run_model_bench(sizes=SIZES) -> dict:
    rows = []
    for n in sizes:
        for case in ("sdpa", "attnscope", "eager"):
            need_gb = 30 * 9 * n * n * 4 / GB  # what output_attentions would hold
            if case == "eager" and need_gb > 8:
                rows.append({"case": case, "n": n, "skipped": f"would hold {need_gb:.0f} GB of attention tensors"})
                continue
            proc = subprocess.run([sys.executable, "-m", "bench.bench_cpu", "_case", case, str(n)],
                                  capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                rows.append({"case": case, "n": n, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    by = {(r["case"], r["n"]): r for r in rows}
    ratios = []
    for n in sizes:
        ours, sdpa, eager = by.get(("attnscope", n), {}), by.get(("sdpa", n), {}), by.get(("eager", n), {})
        if "seconds" in ours and "seconds" in sdpa:
            row = {"n": n, "time_vs_sdpa": round(ours["seconds"] / sdpa["seconds"], 2),
                   "peak_rss_gb": ours["peak_rss_gb"]}
            if "seconds" in eager:
                row["time_vs_eager"] = round(ours["seconds"] / eager["seconds"], 2)
                row["rss_vs_eager"] = round(ours["peak_rss_gb"] / eager["peak_rss_gb"], 2)
            ratios.append(row)
    return {"bench": "cpu_model_smollm2", **machine(), "results": rows, "ratios": ratios,
            "targets": {"n2048_peak_rss_gb_max": 2.5, "n2048_time_vs_sdpa_max": 1.5, "n8192_peak_rss_gb_max": 4.0}}


def machine() -> dict:
    import torch

    return {"machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def timed(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_variant_bench(sizes=(1024, 4096), flex_for=("full", "sliding_window", "decay_1d"), only=None) -> dict:
    import torch
    import torch.nn.functional as F

    from kernels.context import TokenContext
    from kernels.dispatch import attend
    from kernels.variants import VariantError, all_variants, parse_variant

    torch.manual_seed(0)
    rows = []
    for n in sizes:
        side = int(round(n**0.5))
        contexts = {"causal": TokenContext.sequence(n, causal=True, n_heads=9),
                    "vit": TokenContext.vit((side, side), n_prefix=1, n_heads=9)}
        for kind, ctx in contexts.items():
            q, k, v = (torch.randn(1, 9, ctx.n, 64) for _ in range(3))
            scale = 64**-0.5
            causal = kind == "causal"
            dense = timed(partial(F.scaled_dot_product_attention, q, k, v, is_causal=causal, scale=scale))
            for cls in all_variants():
                if only and cls.name not in only:
                    continue
                spec = {"sliding_window": "sliding_window:w=256", "head_ablation": "head_ablation:heads=0.1",
                        "dam": None, "top_theta": None}.get(cls.name, cls.name)
                if spec is None:  # needs a calibration pass over a model; measured through traces instead
                    continue
                variant = parse_variant(spec)
                try:
                    variant.check(ctx)
                except VariantError:
                    continue
                seconds = timed(partial(attend, q, k, v, scale=scale, ctx=ctx, variant=variant, want_lse=False),
                                repeats=1 if n > 2048 else 2)
                row = {"variant": spec, "context": kind, "n": ctx.n, "seconds": round(seconds, 4),
                       "dense_sdpa_seconds": round(dense, 4), "speedup_vs_sdpa": round(dense / seconds, 2)}
                if cls.name in flex_for:
                    row.update(flex_row(q, k, v, variant, ctx, scale, seconds))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return {"bench": "cpu_variants", **machine(), "results": rows,
            "targets": {"sliding_window_w256_n4096_speedup_vs_sdpa_min": 4.0}}


def flex_row(q, k, v, variant, ctx, scale, ours: float) -> dict:
    from kernels.flex import flex_attention

    try:
        t0 = time.perf_counter()
        flex_attention(q, k, v, variant, ctx, scale, compile=True)
        compile_s = time.perf_counter() - t0
        flex = timed(partial(flex_attention, q, k, v, variant, ctx, scale, compile=True), repeats=2)
    except Exception as exc:  # report, don't hide: the row says what failed
        return {"flex_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"flex_seconds": round(flex, 4), "flex_compile_seconds": round(compile_s, 1),
            "speed_vs_flex": round(flex / ours, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_cpu")
    ap.add_argument("what", choices=["model", "variants", "_case"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--sizes", help="comma-separated N values")
    ap.add_argument("--only", help="comma-separated variant names (variants benchmark)")
    a = ap.parse_args()
    sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else None
    if a.what == "_case":
        print(json.dumps(model_case(a.args[0], int(a.args[1]))))
    elif a.what == "model":
        print(json.dumps(run_model_bench(sizes or SIZES), indent=1))
    else:
        only = set(a.only.split(",")) if a.only else None
        print(json.dumps(run_variant_bench(sizes or (1024, 4096), only=only), indent=1))


if __name__ == "__main__":
    main()
