"""Variants from the command line: the catalogue listing, traces under a mask, one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main

CATALOGUE = [  # shared/VARIANTS.md, in its order
    "full", "sliding_window", "strided", "fixed", "dilated_window", "window_2d", "neighborhood_2d", "star",
    "topk", "top_theta", "routing_2d", "block_topk", "entmax", "dam", "decay_1d", "manhattan_decay",
    "polyline_path", "gaussian_2d", "relaxed", "head_ablation", "linear_efficient", "focused_linear", "agent",
    "linformer", "kv_pool_2d", "delta_correction", "prefix_lm", "document", "alibi", "softcap",
]


def test_variants_json_lists_the_catalogue(capsys):
    assert main(["variants", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert sorted(v["name"] for v in table) == sorted(CATALOGUE)
    for v in table:
        assert v["family"] and v["applies_to"] and set(v["applies_to"]) <= {"vit", "causal", "bidirectional"}
        assert v["doc"], f"{v['name']} has no docstring citing its paper"
        for p in v["params"]:
            assert {"name", "type", "default", "allowed"} <= p.keys()
    by_name = {v["name"]: v for v in table}
    assert {p["name"]: p["default"] for p in by_name["sliding_window"]["params"]} == {"w": 256, "sinks": "auto"}
    assert by_name["window_2d"]["applies_to"] == ["vit"]


def grid_mask(M, rows=8, cols=8, n_prefix=1):
    """window_2d's rule, by brute force: same M×M window, special tokens global."""
    n = n_prefix + rows * cols
    keep = np.ones((n, n), dtype=bool)
    for i in range(n_prefix, n):
        for j in range(n_prefix, n):
            (ri, ci), (rj, cj) = divmod(i - n_prefix, cols), divmod(j - n_prefix, cols)
            keep[i, j] = ri // M == rj // M and ci // M == cj // M
    return keep


@pytest.mark.slow
def test_trace_digits_window_2d_zero_where_masked(tmp_path, capsys, digits_vit):
    from models.digits_data import digit_image

    img = tmp_path / "digit.png"
    digit_image(5).save(img)
    assert main(["trace", "--model", "digits-vit", "--image", str(img), "--variant", "window_2d:M=4",
                 "--out", str(tmp_path / "d")]) == 0
    with np.load(tmp_path / "d" / "trace.npz") as z:
        keep = grid_mask(4)
        for layer in range(4):
            probs = z[f"L{layer}_probs"]
            assert (probs[:, ~keep] == 0).all()
            assert (probs[:, keep] > 0).mean() > 0.99
            np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


@pytest.mark.slow
def test_trace_smollm_sliding_window_zero_where_masked(tmp_path, capsys, smollm):
    text = " ".join(f"word{i}" for i in range(60))
    assert main(["trace", "--model", "smollm2-135m", "--text", text, "--variant", "sliding_window:w=32,sinks=4",
                 "--out", str(tmp_path / "d")]) == 0
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert man["variant"] == "sliding_window:w=32,sinks=4"
    n = len(man["tokens"])
    assert n > 60
    i, j = np.indices((n, n))
    keep = ((i - j >= 0) & (i - j <= 32)) | ((j < 4) & (j <= i))
    with np.load(tmp_path / "d" / "trace.npz") as z:
        for layer in (0, 15, 29):
            probs = z[f"L{layer}_probs"]
            assert (probs[:, ~keep] == 0).all()
            np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("argv,needle", [
    (["--model", "minilm", "--variant", "no_such"], "unknown variant 'no_such'"),
    (["--model", "minilm", "--variant", "sliding_window:w=-3"], "sliding_window: w=-3 out of range"),
    (["--model", "minilm", "--variant", "sliding_window:width=3"], "unknown parameter 'width'"),
    (["--model", "minilm", "--variant", "window_2d:M=4"], "applies to vit models"),
    (["--model", "minilm", "--variant", "entmax:alpha=abc"], "alpha"),
])
def test_bad_variants_exit_with_one_line(tmp_path, capsys, argv, needle):
    code = main(["trace", *argv, "--text", "hello world", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
    assert code == 1 and len(lines) == 1 and needle in lines[0], err
