"""Export every view of a `minilm` trace in all four formats from ONE CLI call (JSON on stdout).

    python -m bench.bench_export [--repeats 1] [--save bench/results/export_cpu.json]

Runs `attnscope export --model minilm --text ... --variant sliding_window:w=4 --all --out DIR` as a subprocess
(the wall clock a user waits: Python start-up, model load, two traces, every figure in PNG, SVG, PDF and HTML
with one Chromium kept open, and the data folders). The same command with `--format html` (no Chromium) runs
beside it as the baseline, so the ratio is the cost of the static formats. Target: ≤ 30 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT = "The quick brown fox jumps over the lazy dog because the dog was sleeping in the sun."
TARGET_S = 30.0


def run_cli(out: Path, fmt: str | None) -> dict:
    cmd = [sys.executable, "-m", "app.cli", "export", "--model", "minilm", "--text", TEXT,
           "--variant", "sliding_window:w=4", "--all", "--layer", "2", "--head", "3", "--out", str(out)]
    if fmt:
        cmd += ["--format", fmt]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"export failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    files = [p for p in out.iterdir() if p.is_file()]
    by_format: dict[str, int] = {}
    for p in files:
        by_format[p.suffix.lstrip(".")] = by_format.get(p.suffix.lstrip("."), 0) + 1
    return {"wall_s": round(wall, 2), "figures": len(files), "by_format": dict(sorted(by_format.items())),
            "data_folders": len([p for p in out.iterdir() if p.is_dir()]),
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1, help="runs of each command (the best is reported)")
    ap.add_argument("--save", help="also write the JSON here (e.g. bench/results/export_cpu.json)")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"all_formats": [], "html_only": []}
    with tempfile.TemporaryDirectory(prefix="attnscope-bench-") as d:
        for i in range(args.repeats):
            runs["all_formats"].append(run_cli(Path(d) / f"all{i}", None))
            runs["html_only"].append(run_cli(Path(d) / f"html{i}", "html"))
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    from app.export import find_chromium

    result = {
        "bench": "export_all_views_cpu",
        "command": "attnscope export --model minilm --text TEXT --variant sliding_window:w=4 --all --out DIR",
        "text": TEXT,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "chromium": find_chromium(),
        "all_formats": best["all_formats"],
        "html_only_baseline": best["html_only"],
        "static_over_html": round(best["all_formats"]["wall_s"] / best["html_only"]["wall_s"], 2),
        "target_s": TARGET_S,
        "within_target": best["all_formats"]["wall_s"] <= TARGET_S,
        "repeats": args.repeats,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(text + "\n")


if __name__ == "__main__":
    main()
