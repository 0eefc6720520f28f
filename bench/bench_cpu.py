"""CPU benchmarks of issue 13: JSON on stdout, also written to bench/results/cpu_<what>.json (`--out`).

  python -m bench.bench_cpu model      # smollm2-135m: traces (every layer's maps) vs the plain SDPA forward,
                                       # and quality sweeps vs plain forwards (--skip traces|sweeps|long)
  python -m bench.bench_cpu variants   # attention alone: each variant vs dense causal SDPA, FlexAttention, compile

(`attnscope bench model` and `attnscope bench variants` run the same.)

Each ratio is measured twice in one run: in-process (the baseline and the case in one process,
interleaved, best of --repeats: robust on a busy machine) and whole-process (each case alone in a
fresh process, model load included, with its peak RSS). The JSON records the load average before
and after and whether the machine was shared; the README's numbers come from a quiet machine.
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"
GB = 1024**3
MODEL_SIZES = (2048, 4096, 8192)
WINDOW = "sliding_window:w=64,sinks=4"  # its trace at WINDOW_N against the full trace
WINDOW_N = 4096
SWEEP_VARIANTS = ["full", "sliding_window:w=64|256,sinks=4|0"]  # 5 points
SWEEP_N, LONG_SWEEP_N = 1024, 7600
LONG_SWEEP = ["full", "sliding_window:w=64,sinks=4", "sliding_window:w=64,sinks=0"]
GPL = Path("/usr/share/common-licenses/GPL-3")
TARGETS = {
    "model": {"trace_vs_sdpa_2048_max": 1.5, "trace_vs_sdpa_8192_max": 2.0, "trace_peak_rss_gb_8192_max": 3.0,
              "window_trace_vs_full_trace_4096_max": 0.35, "sweep_no_attention_vs_plain_forwards_1024_max": 1.5,
              "sweep_attention_vs_no_attention_1024_max": 2.0, "long_sweep_peak_rss_gb_max": 3.0},
    "variants": {"sliding_window_w256_n4096_speedup_vs_sdpa_min": 4.0},
}


# ---------------------------------------------------------------- shared


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # ru_maxrss is in KiB on Linux


def machine() -> dict:
    import torch

    load = os.getloadavg()
    cpus = os.cpu_count() or 1
    return {"machine": platform.machine(), "cpu_count": cpus, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_average": [round(x, 2) for x in load],
            "machine_shared": load[0] > 0.5 * cpus}


def best_of(cases: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each case, the cases interleaved repeat after repeat (after one warm-up each),
    and under "<case>_cpu" its best CPU time (all threads): on a shared machine the CPU time is what
    the case itself did, the wall time also what the others did."""
    for fn in cases.values():
        fn()
    best = dict.fromkeys([*cases, *(f"{name}_cpu" for name in cases)], float("inf"))
    for _ in range(repeats):
        for name, fn in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            best[f"{name}_cpu"] = min(best[f"{name}_cpu"], time.process_time() - c0)
    return {name: round(t, 4) for name, t in best.items()}


def ratio(best: dict, case: str, base: str) -> dict[str, float]:
    """case / base in wall time and in CPU time."""
    return {"wall": round(best[case] / best[base], 3), "cpu": round(best[f"{case}_cpu"] / best[f"{base}_cpu"], 3)}


def child(*args: str, timeout: int = 7200) -> dict:
    """One case in a fresh process (python -m bench.bench_cpu _child ...): its JSON, or the error."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.bench_cpu", "_child", *args], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        return {"case": list(args), "error": proc.stderr.strip().splitlines()[-1:]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_seconds": round(time.perf_counter() - t0, 2)}


def long_text(lm, n: int) -> str:
    from models.calibrate import CALIBRATION_TEXT

    para = CALIBRATION_TEXT.read_text()
    text = para
    while len(lm.encode_text(text).tokens) < n:
        text += "\n\n" + para
    return text


# ---------------------------------------------------------------- model: traces vs the SDPA forward


def _model_cases(lm, n: int) -> dict:
    import torch

    from models.tracer import encode, trace

    text = long_text(lm, n)
    enc = encode(lm, text=text, max_tokens=n)

    def sdpa():
        lm.module.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                lm.module(**enc.inputs, logits_to_keep=1)
        finally:
            lm.module.set_attn_implementation("attnscope")

    cases = {"sdpa": sdpa, "trace": lambda: trace(lm, text=text, max_tokens=n)}
    if n == WINDOW_N:
        cases["trace_window"] = lambda: trace(lm, text=text, max_tokens=n, variant=WINDOW)
    return cases


def model_child(case: str, n: int, repeats: int) -> dict:
    from models.registry import load

    lm = load("smollm2-135m")
    rss_loaded = peak_rss_gb()
    cases = _model_cases(lm, n)
    if case == "inprocess":
        best = best_of(cases, repeats)
        out = {"best_seconds": best, "trace_vs_sdpa": ratio(best, "trace", "sdpa")}
        if "trace_window" in cases:
            out["window_trace_vs_full_trace"] = ratio(best, "trace_window", "trace")
        return {"case": case, "n": n, "repeats": repeats, **out}
    t0, c0 = time.perf_counter(), time.process_time()
    cases[case]()
    return {"case": case, "n": n, "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - c0, 3), "peak_rss_gb": round(peak_rss_gb(), 3),
            "rss_after_load_gb": round(rss_loaded, 3)}


def whole_ratio(case: dict, base: dict) -> dict[str, float]:
    """Forward time of one fresh process over another's (load excluded), wall and CPU, and with loads."""
    return {"wall": round(case["seconds"] / base["seconds"], 3),
            "cpu": round(case["cpu_seconds"] / base["cpu_seconds"], 3),
            "process_wall": round(case["process_seconds"] / base["process_seconds"], 3)}


def run_model(sizes, repeats: int) -> dict:
    rows, ratios = [], {}
    for n in sizes:
        inproc = child("model", "inprocess", str(n), str(repeats))
        rows.append(inproc)
        whole = {case: child("model", case, str(n), "1") for case in ("sdpa", "trace")}
        if n == WINDOW_N:
            whole["trace_window"] = child("model", "trace_window", str(n), "1")
        rows.extend(whole.values())
        found = {"trace_vs_sdpa_in_process": inproc.get("trace_vs_sdpa")}
        if "seconds" in whole["trace"] and "seconds" in whole["sdpa"]:
            found["trace_vs_sdpa_whole_process"] = whole_ratio(whole["trace"], whole["sdpa"])
            found["trace_peak_rss_gb"] = whole["trace"]["peak_rss_gb"]
        if n == WINDOW_N:
            found["window_vs_full_in_process"] = inproc.get("window_trace_vs_full_trace")
            if "seconds" in whole["trace_window"] and "seconds" in whole["trace"]:
                found["window_vs_full_whole_process"] = whole_ratio(whole["trace_window"], whole["trace"])
        ratios[str(n)] = found
    return {"results": rows, "ratios": ratios}


# ---------------------------------------------------------------- variants: attention alone


def run_variants(sizes, repeats: int, only=None, flex_for=("full", "sliding_window"), compiled: bool = True) -> dict:
    import torch
    import torch.nn.functional as F

    from kernels.context import TokenContext
    from kernels.dispatch import attend
    from kernels.variants import VariantError, all_variants, parse_variant

    torch.manual_seed(0)
    rows = []
    for n in sizes:
        side = int(round(n**0.5))
        for kind, ctx in {"causal": TokenContext.sequence(n, causal=True, n_heads=9),
                          "vit": TokenContext.vit((side, side), n_prefix=1, n_heads=9)}.items():
            q, k, v = (torch.randn(1, 9, ctx.n, 64) for _ in range(3))
            sdpa = partial(F.scaled_dot_product_attention, q, k, v, is_causal=kind == "causal", scale=0.125)
            for cls in all_variants():
                if only and cls.name not in only:
                    continue
                spec = {"sliding_window": "sliding_window:w=256", "head_ablation": "head_ablation:heads=0.1",
                        "document": "document:lengths=" + ";".join([str(n // 4)] * 3)}.get(cls.name, cls.name)
                if cls.name in ("dam", "top_theta"):  # calibrated on a model: measured through traces instead
                    continue
                variant = parse_variant(spec)
                try:
                    variant.check(ctx)
                except VariantError:
                    continue
                maps = partial(attend, q, k, v, scale=0.125, ctx=ctx, variant=variant)
                best = best_of({
                    "sdpa": sdpa,
                    "output": partial(maps, want_lse=False),
                    "maps": partial(_with_maps, maps, ctx),
                }, repeats)
                row = {"variant": spec, "context": kind, "n": ctx.n, "seconds": best,
                       "output_vs_sdpa": ratio(best, "output", "sdpa"), "maps_vs_sdpa": ratio(best, "maps", "sdpa")}
                if cls.name in flex_for and kind == "causal":
                    row.update(flex_row(q, k, v, variant, ctx, best["sdpa"], repeats))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    out = {"results": rows}
    if compiled:
        out["compiled_softmax"] = compile_row(repeats)
    return out


def _with_maps(attend_call, ctx):
    from kernels.maps import MapsSink

    return attend_call(sinks=(MapsSink(1, 9, ctx.n, ctx.n, ctx, pooled=256, device="cpu"),))


def flex_row(q, k, v, variant, ctx, sdpa_seconds: float, repeats: int) -> dict:
    """torch.compile'd FlexAttention on this CPU, outputs only (no return_lse on CPU)."""
    from kernels.flex import flex_attention

    run = partial(flex_attention, q, k, v, variant, ctx, 0.125, compile=True, want_lse=False)
    try:
        t0 = time.perf_counter()
        run()
        compile_s = time.perf_counter() - t0
        flex = best_of({"flex": run}, repeats)["flex"]
    except Exception as exc:  # report, don't hide: the row says what failed
        return {"flex_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"flex_compiled_seconds": flex, "flex_first_call_seconds": round(compile_s, 1),
            "flex_vs_sdpa_wall": round(flex / sdpa_seconds, 3)}


def compile_row(repeats: int) -> dict:
    """torch.compile (inductor, C++) of the one softmax + log-sum-exp every chunk runs, against eager,
    on a chunk of 256 causal rows × 2048 keys × 9 heads."""
    import torch

    from kernels.core import softmax_lse

    s = torch.randn(1, 9, 256, 2048)
    s[..., 1792:].masked_fill_(torch.ones(256, 256, dtype=torch.bool).triu(1), float("-inf"))
    compiled = torch.compile(softmax_lse, dynamic=True)
    t0 = time.perf_counter()
    try:
        compiled(s)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    compile_s = time.perf_counter() - t0
    best = best_of({"eager": lambda: softmax_lse(s), "compiled": lambda: compiled(s)}, repeats * 5)
    same = all(torch.allclose(a, b, atol=1e-6, equal_nan=True) for a, b in zip(softmax_lse(s), compiled(s)))
    return {"best_seconds": best, "compiled_vs_eager": ratio(best, "compiled", "eager"),
            "compile_seconds": round(compile_s, 1), "same_result": same}


# ---------------------------------------------------------------- sweeps


def sweep_child(case: str, repeats: int) -> dict:
    import torch

    from analysis import quality
    from models.registry import load

    lm = load("smollm2-135m")
    if case == "inprocess":
        batches = quality.text_batches(lm, GPL.read_text(), max_tokens=SWEEP_N)
        points = len(quality.expand_specs(SWEEP_VARIANTS))
        inputs = batches[0].enc.inputs

        def plain_forwards():
            lm.module.set_attn_implementation("sdpa")
            try:
                with torch.no_grad():
                    for _ in range(points):
                        lm.module(**inputs)  # logits at every position, as a perplexity needs
            finally:
                lm.module.set_attn_implementation("attnscope")

        best = best_of({
            "plain_forwards": plain_forwards,
            "no_attention": lambda: quality.sweep(lm, SWEEP_VARIANTS, batches=batches, attention=False),
            "attention": lambda: quality.sweep(lm, SWEEP_VARIANTS, batches=batches, attention=True),
        }, repeats)
        return {"case": case, "n": SWEEP_N, "points": points, "best_seconds": best,
                "no_attention_vs_plain_forwards": ratio(best, "no_attention", "plain_forwards"),
                "attention_vs_no_attention": ratio(best, "attention", "no_attention")}
    rss_loaded = peak_rss_gb()
    batches = quality.text_batches(lm, GPL.read_text(), max_tokens=LONG_SWEEP_N)
    points = [quality._Point(s, quality.parse_variant(s), None) for s in LONG_SWEEP]
    estimate = quality.sweep_bytes(lm, batches, points, attention=True, kl_rows=quality.KL_ROWS)
    t0 = time.perf_counter()
    quality.sweep(lm, LONG_SWEEP, batches=batches, attention=True)
    peak = peak_rss_gb()
    return {"case": case, "n": batches[0].enc.ctx.n, "variants": LONG_SWEEP,
            "seconds": round(time.perf_counter() - t0, 1), "peak_rss_gb": round(peak, 3),
            "rss_after_load_gb": round(rss_loaded, 3),
            "estimate_gb": round(estimate / GB, 3), "measured_growth_gb": round(peak - rss_loaded, 3)}


def run_sweep(repeats: int, long: bool = True) -> dict:
    rows = [child("sweep", "inprocess", str(repeats))]
    if long:
        rows.append(child("sweep", "long", "1"))
    return {"results": rows}


# ---------------------------------------------------------------- command line


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_cpu")
    ap.add_argument("what", choices=["model", "variants", "_child"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--sizes", help="comma-separated N values")
    ap.add_argument("--only", help="comma-separated variant names (variants benchmark)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each in-process case (best kept)")
    ap.add_argument("--skip", default="", help="model: comma-separated parts to skip: traces, sweeps, long")
    ap.add_argument("--out", help="where the JSON goes (default bench/results/cpu_<what>.json; '-' for stdout only)")
    a = ap.parse_args()
    sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else None
    if a.what == "_child":
        kind, *rest = a.args
        if kind == "model":
            result = model_child(rest[0], int(rest[1]), int(rest[2]))
        else:
            result = sweep_child(rest[0], int(rest[1]))
        print(json.dumps(result))
        return
    before = machine()
    skip = set(filter(None, a.skip.split(",")))
    if a.what == "model":
        result = {} if "traces" in skip else run_model(sizes or MODEL_SIZES, a.repeats)
        if "sweeps" not in skip:
            result["sweeps"] = run_sweep(a.repeats, long="long" not in skip)["results"]
    else:
        result = run_variants(sizes or (1024, 4096), a.repeats, only=set(a.only.split(",")) if a.only else None)
    after = machine()
    report = {"bench": f"cpu_{a.what}", **before, "load_average_after": after["load_average"],
              "machine_shared": before["machine_shared"] or after["machine_shared"], **result,
              "targets": TARGETS[a.what]}
    text = json.dumps(report, indent=1)
    print(text)
    if a.out != "-":
        path = Path(a.out) if a.out else RESULTS / f"cpu_{a.what}.json"
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
