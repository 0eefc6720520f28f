"""The kernels compile for a real GPU (sm_90) with a variant's own rule as the mask, without a GPU.

Runs in its own process: the other kernel tests set TRITON_INTERPRET, which makes the kernels
interpreted functions. `python -m bench.bench_triton --compile` compiles every kernel form.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json
from kernels.triton.compile_check import compile_forms
print(json.dumps(compile_forms(["sliding_window:w=64,sinks=4", "alibi"], kinds=("causal",))))
"""


@pytest.mark.slow
def test_rule_and_bias_forms_compile_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r["variant"].split(":")[0], r["kernel"]) for r in rows] == [
        ("sliding_window", "forward"), ("sliding_window", "maps"), ("alibi", "forward"), ("alibi", "maps")]
    assert all("seconds" in r for r in rows), [r.get("error") for r in rows]
