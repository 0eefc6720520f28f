"""The `attnscope` command line: commands of the contract, and one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from app.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    assert {p["name"] for p in json.loads(out)} == {"minilm", "smollm2-135m", "digits-vit"}


@pytest.mark.slow
def test_trace_smollm(tmp_path, capsys, smollm):
    code, out, _ = run(capsys, "trace", "--model", "smollm2-135m", "--text", "Attention is all you need.",
                       "--out", str(tmp_path / "d"))
    assert code == 0, out
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    with np.load(tmp_path / "d" / "trace.npz") as z:
        probs = z["L0_probs"]
        n = len(man["tokens"])
        assert probs.shape == (9, n, n)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert len([k for k in z.files if k.endswith("_probs")]) == 30
    assert man["model_id"] == "smollm2-135m" and man["token_ids"] and man["grid"] is None


@pytest.mark.parametrize("argv,needle", [
    (["--model", "no-such-org/no-such-model", "--text", "hi"], "not in the local"),
    (["--model", "minilm", "--text", "   "], "text is empty"),
    (["--model", "minilm", "--image", "/nonexistent.png"], "does not exist"),
    (["--model", "minilm", "--text", "hi", "--variant", "no_such_variant"], "unknown variant"),
    (["--model", "minilm", "--text", "hi", "--variant", "full:w=3"], "unknown parameter"),
    (["--model", "digits-vit", "--text", "hi"], "vision model"),
])
def test_bad_input_one_line(tmp_path, capsys, argv, needle):
    code, _, err = run(capsys, "trace", *argv, "--out", str(tmp_path / "d"))
    assert code == 1
    assert needle in one_error_line(err)
    assert not (tmp_path / "d").exists()


def test_corrupt_image_and_non_utf8_text(tmp_path, capsys):
    bad_img = tmp_path / "x.png"
    bad_img.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, _, err = run(capsys, "trace", "--model", "digits-vit", "--image", str(bad_img), "--out", str(tmp_path / "d"))
    assert code == 1 and "not a readable image" in one_error_line(err)
    bad_txt = tmp_path / "x.txt"
    bad_txt.write_bytes("caf\xe9".encode("latin-1"))
    code, _, err = run(capsys, "trace", "--model", "minilm", "--text-file", str(bad_txt), "--out", str(tmp_path / "d"))
    assert code == 1 and "not UTF-8" in one_error_line(err)


def test_console_script_exits_nonzero_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "trace", "--model", "minilm", "--text", "hi", "--variant", "nope",
         "--out", str(tmp_path / "d")], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    one_error_line(proc.stderr)


def test_trust_remote_code_warns(tmp_path, capsys, tokenizer):
    from tiny import tiny_text_model

    tiny_text_model("gpt2").save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    code, _, err = run(capsys, "trace", "--model", str(tmp_path / "m"), "--text", "hello", "--trust-remote-code",
                       "--out", str(tmp_path / "d"))
    assert code == 0
    assert "attnscope: warning: --trust-remote-code runs code downloaded with the model" in err
