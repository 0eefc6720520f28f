"""bench/gpu_check.sh in its dry mode (what runs without CUDA), and the measured dispatch table it feeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_table import build, winners

ROOT = Path(__file__).resolve().parents[1]


def test_dry_mode_runs_what_needs_no_cuda_and_says_what_it_skipped(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    env.pop("TRITON_INTERPRET", None)  # the sm_90 compile needs it unset; the script sets it where needed
    if not (ROOT / ".venv/bin/python").exists():
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("gpu_check: skipped")]
    assert len(skipped) == 3 and all("no CUDA" in line for line in skipped), proc.stdout
    for part, line in zip(("gpu tests", "timing the kernels", "32k-token trace"), skipped):
        assert part in line, skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry_check.log", "dry_tests.json", "dry_trace.json",
                                                          "dry_triton.json"]

    tests = json.loads((tmp_path / "dry_tests.json").read_text())
    gpu_tests = (ROOT / "tests/kernels/test_triton_gpu.py").read_text()
    assert tests["collected"] == len(tests["tests"]) > 20 and "no CUDA" in tests["skipped"]
    assert all(t.split("::")[1].split("[")[0] in gpu_tests for t in tests["tests"])

    triton = json.loads((tmp_path / "dry_triton.json").read_text())
    # two forms × (sequence, ViT grid) × (forward, maps)
    assert triton["compile_sm90"]["failed"] == 0 and triton["compile_sm90"]["compiled"] == 8
    sections = triton["smoke"]["sections"]
    assert set(sections) == {"dense", "sliding_window", "block_sparse", "window_2d", "score_mod", "maps"}
    for name, (row,) in sections.items():
        assert all("ms" in case for case in row["cases"]), (name, row["cases"])
    assert set(winners(triton["smoke"])) == {"baseline", "static_mask", "content", "score_mod"}

    trace = json.loads((tmp_path / "dry_trace.json").read_text())
    assert trace["layers"] == trace["layers_with_maps"] == 30 and trace["heads"] == 9
    assert trace["tokens"] == 64 and trace["maps_finite"] and trace["lse_finite"]


def row(family, triton_ms, flex_ms):
    return {"family": family, "speedup_vs": {"flex_compiled": round(flex_ms / triton_ms, 3)}}


def test_table_takes_the_faster_path_per_family_from_the_gpu_json(tmp_path):
    report = {"card": "nvidia-h200", "device": "NVIDIA H200", "sections": {
        "dense": [row("baseline", 1.0, 1.2), row("baseline", 2.0, 2.2)],
        "sliding_window": [row("static_mask", 1.0, 0.5)],
        "window_2d": [row("static_mask", 1.0, 1.1)],  # geometric mean of 0.5 and 1.1: flex wins
        "score_mod": [{"family": "score_mod", "cases": [{"name": "flex_compiled", "error": "OOM"}]}],
        "maps": [{"family": "baseline", "speedup_vs": {"forward": 0.1}}],  # no flex counterpart: ignored
    }}
    path = tmp_path / "gpu_nvidia-h200_triton.json"
    path.write_text(json.dumps(report))
    table = build([path])
    entry = table["cards"]["nvidia-h200"]
    assert entry["source"] == [path.name]
    assert {f: e["backend"] for f, e in entry["families"].items()} == {"baseline": "triton", "static_mask": "flex"}
    assert entry["families"]["baseline"]["rows"] == 2 and table["fallback"] == "triton"
