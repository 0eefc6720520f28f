"""Peak memory of a trace against the guard's estimate (`attnscope bench memory`, JSON on stdout).

    python -m bench.bench_memory [--presets minilm smollm2-135m digits-vit] [--sizes 512 2048 8192]
                                 [--budget-case] [--out bench/results/memory_cpu.json]

Each case (preset, N, with or without --qk) runs in a fresh process: load the model, note the RSS,
reset the kernel's peak-RSS counter (/proc/self/clear_refs), trace N tokens and save the trace folder,
then read the peak (VmHWM). `measured` is that peak minus the RSS before the trace: what the request
added on top of the loaded model. `estimate` is `models.memory.trace_estimate`, the number the guard
compares with the budget; `ratio` = estimate / measured. A model that cannot take N tokens (minilm
takes 512, a ViT sees a fixed grid) is measured at the length it takes, once.

`--budget-case` adds the acceptance probe of issue 15: ATTNSCOPE_MEMORY_BUDGET_GB=1.5 and a 6000-token
smollm2-135m trace with q and k: refused before the forward pass, or completed within 1.5 GB.

`--reestimate FILE` recomputes the estimates and ratios of a results file with the constants of
models/memory.py as they are now (the measurements stay): how those constants are calibrated.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bench_cpu import long_text  # noqa: E402  (the shipped text repeated to N tokens)

PRESETS = ("minilm", "smollm2-135m", "digits-vit")
SIZES = (512, 2048, 8192)
GB = 1024**3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def rss() -> int:
    return _status_kib("VmRSS") * 1024


def peak() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Set the peak-RSS counter (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def one_case(preset: str, n: int, qk: bool) -> dict:
    """Measure one trace + save in this process (run by `main` in a child process)."""
    from models.registry import load
    from models.tracer import encode, trace

    lm = load(preset)
    if lm.kind == "vit":
        from models.digits_data import digit_image

        inputs = {"image": digit_image(0)}
    else:
        inputs = {"text": long_text(lm, n), "max_tokens": n}
    n_real = encode(lm, **inputs).ctx.n
    weights = sum(p.numel() * p.element_size() for p in lm.module.parameters())
    gc.collect()
    before = rss()
    reset_peak()
    t0 = time.perf_counter()
    tr = trace(lm, qk=qk, **inputs)
    seconds = time.perf_counter() - t0
    trace_peak = peak()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        tr.save(os.path.join(d, "t"))
        save_seconds = time.perf_counter() - t0
    total_peak = peak()
    measured = total_peak - before
    row = {
        "preset": preset, "n": n_real, "qk": qk, "dense": tr.dense,
        "measured_bytes": measured, "measured_gb": round(measured / GB, 3),
        "measured_trace_gb": round((trace_peak - before) / GB, 3),
        "kept_arrays_gb": round(sum(a.nbytes for a in tr.arrays.values()) / GB, 3),
        "rss_before_gb": round(before / GB, 3), "weights_gb": round(weights / GB, 3),
        "trace_seconds": round(seconds, 2), "save_seconds": round(save_seconds, 2),
    }
    _estimate_row(row, lm)
    return row


def _estimate_row(row: dict, lm) -> None:
    from models.memory import trace_estimate

    est = trace_estimate(lm, row["n"], dense=row["dense"], qk=row["qk"])
    row.update(estimate_gb=round(est.total / GB, 3), ratio=round(est.total / row["measured_bytes"], 3),
               estimate_parts_gb={k: round(v / GB, 3) for k, v in est.parts.items()})


def reestimate(path: str) -> int:
    """Rewrite the estimates of a results file with the current constants; the measured numbers stay."""
    from models.registry import load

    with open(path) as f:
        result = json.load(f)
    models = {}
    for row in result["results"]:
        if "ratio" in row:
            lm = models.get(row["preset"]) or models.setdefault(row["preset"], load(row["preset"]))
            _estimate_row(row, lm)
    ratios = [r["ratio"] for r in result["results"] if "ratio" in r]
    result["ratio_range"] = [min(ratios), max(ratios)]
    text = json.dumps(result, indent=1)
    with open(path, "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


def budget_case(tokens: int = 6000, budget_gb: float = 1.5) -> dict:
    """The issue's probe: refused before the forward pass, or completed within the budget."""
    from kernels.errors import user_message
    from models.registry import load
    from models.tracer import trace

    os.environ["ATTNSCOPE_MEMORY_BUDGET_GB"] = str(budget_gb)
    lm = load("smollm2-135m")
    text = long_text(lm, tokens)
    gc.collect()
    before = rss()
    reset_peak()
    row = {"case": "budget", "preset": "smollm2-135m", "n": tokens, "qk": True, "budget_gb": budget_gb}
    try:
        tr = trace(lm, text=text, max_tokens=tokens, qk=True)
        with tempfile.TemporaryDirectory() as d:
            tr.save(os.path.join(d, "t"))
        row.update(outcome="completed", notes=tr.notes)
    except Exception as exc:
        msg = user_message(exc)
        if msg is None:
            raise
        row.update(outcome="refused", message=msg)
    row["measured_gb"] = round((peak() - before) / GB, 3)
    row["within_budget"] = row["measured_gb"] <= budget_gb
    return row


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_memory", "--child", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"args": args, "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    ap.add_argument("--qk", choices=("both", "yes", "no"), default="both")
    ap.add_argument("--budget-case", action="store_true", help="add the 1.5 GB / 6000-token --qk probe")
    ap.add_argument("--out", help="also write the JSON to this file")
    ap.add_argument("--reestimate", metavar="FILE", help="recompute estimates and ratios of a results file")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.reestimate:
        return reestimate(args.reestimate)
    if args.child:
        if args.child[0] == "budget":
            row = budget_case()
        else:
            preset, n, qk = args.child
            row = one_case(preset, int(n), qk == "1")
        print(json.dumps(row))
        return 0
    qks = {"both": (False, True), "yes": (True,), "no": (False,)}[args.qk]
    limits = {"minilm": 512, "digits-vit": 65}  # what each model takes: its position limit, its grid
    rows, seen = [], set()
    for preset in args.presets:
        for n in args.sizes:
            n_case = min(n, limits.get(preset, n))
            for qk in qks:
                if (preset, n_case, qk) in seen:
                    continue
                seen.add((preset, n_case, qk))
                rows.append(_child([preset, str(n_case), "1" if qk else "0"]))
                print(json.dumps(rows[-1]), file=sys.stderr)
    if args.budget_case:
        rows.append(_child(["budget"]))
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    import torch

    result = {
        "bench": "memory", "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "note": "peak RSS growth of trace + save over the RSS after loading the model",
        "ratio_range": [min(ratios), max(ratios)] if ratios else None,
        "results": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
