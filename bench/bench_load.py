"""Load and trace times of the embedded presets on this machine's CPU (JSON on stdout).

Usage: python -m bench.bench_load [--cold]   (--cold clears the GGUF cache first)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INPUTS = {
    "minilm": {"text": "The quick brown fox jumps over the lazy dog because the dog was sleeping in the sun."},
    "smollm2-135m": {"text": "The quick brown fox jumps over the lazy dog because the dog was sleeping in the sun."},
    "digits-vit": {"image": "digit"},
}


def measure(preset: str, repeats: int = 3) -> dict:
    import torch

    from models.digits_data import digit_image
    from models.registry import load
    from models.tracer import encode, trace

    t0 = time.perf_counter()
    lm = load(preset)
    load_s = time.perf_counter() - t0
    inp = dict(INPUTS[preset])
    if inp.get("image") == "digit":
        inp["image"] = digit_image(0)
    trace(lm, **inp)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tr = trace(lm, **inp)
        times.append(time.perf_counter() - t0)
    enc = encode(lm, **inp)
    plain = []
    for _ in range(repeats):  # the model's forward with no recording (SDPA path), same process
        t0 = time.perf_counter()
        with torch.no_grad():
            lm.forward(enc)
        plain.append(time.perf_counter() - t0)
    return {
        "preset": preset,
        "tokens": tr.n,
        "load_s": round(load_s, 3),
        "trace_s": round(min(times), 4),
        "forward_s": round(min(plain), 4),
        "trace_over_forward": round(min(times) / min(plain), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", action="store_true", help="clear the dequantized GGUF cache first")
    args = ap.parse_args()
    import torch

    from models.registry import cache_dir

    if args.cold:
        shutil.rmtree(cache_dir() / "gguf", ignore_errors=True)
    rows = [measure(p) for p in INPUTS]
    print(json.dumps({
        "bench": "load_trace_cpu", "cold_gguf": args.cold, "machine": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "results": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
