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
    code, out, err = run(capsys, "trace", "--model", "smollm2-135m", "--text", "Attention is all you need.",
                         "--out", str(tmp_path / "d"))
    assert code == 0, out
    bar = [ln for ln in err.splitlines() if "layers ·" in ln]  # the progress bar on stderr, a line per tenth
    assert bar[0].startswith("attnscope: trace 3/30 layers") and bar[-1].startswith("attnscope: trace 30/30 layers")
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


# -- issue 15: cheap checks first, one line for every bad input, nothing overwritten -------------------------
@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is loaded: the checks under test must come first."""
    import models.registry

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the cheap checks")

    monkeypatch.setattr(models.registry, "load", refuse)


@pytest.mark.parametrize("extra,needle", [
    (["--variant", "no_such_variant"], "unknown variant"),
    (["--variant", "sliding_window:w=-3"], "out of range"),
    (["--variant", "sliding_window:width=3"], "unknown parameter"),
    (["--variant", "window_2d:M=4"], "applies to vit models"),
    (["--layers", ","], "--layers ',' names nothing"),
    (["--layers", " "], "names nothing"),
    (["--heads", ","], "--heads ',' names nothing"),
    (["--layers", "a,b"], "comma-separated integers"),
    (["--layers", "-1"], "indices start at 0"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
    (["--max-tokens", "-5"], "--max-tokens must be at least 1, got -5"),
])
def test_cheap_checks_come_before_the_model_loads(tmp_path, capsys, no_model, extra, needle):
    code, _, err = run(capsys, "trace", "--model", "minilm", "--text", "hello", *extra, "--out", str(tmp_path / "d"))
    assert code == 1 and needle in one_error_line(err), err
    assert "attnscope: loading" not in err  # no progress line: nothing was loaded


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_refused_before_loading(tmp_path, capsys, no_model, text):
    code, _, err = run(capsys, "trace", "--model", "minilm", "--text", text, "--out", str(tmp_path / "d"))
    assert code == 1 and "--text is empty" in one_error_line(err)
    (tmp_path / "empty.txt").write_text(" \n")
    code, _, err = run(capsys, "trace", "--model", "minilm", "--text-file", str(tmp_path / "empty.txt"),
                       "--out", str(tmp_path / "d"))
    assert code == 1 and "is empty" in one_error_line(err)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", "-1", "0", "1e400"])
def test_bad_memory_budget_is_one_line_before_loading(tmp_path, capsys, no_model, monkeypatch, value):
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", value)
    for argv in (["trace", "--model", "minilm", "--text", "hi", "--out", str(tmp_path / "d")],
                 ["sweep", "--model", "minilm", "--variants", "full"],
                 ["heads", "--model", "minilm"]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "ATTNSCOPE_MEMORY_BUDGET_GB" in one_error_line(err) and "is not a size" in err


def test_sweep_layers_comma_and_bad_counts_before_loading(capsys, no_model):
    for argv, needle in ([["--layers", ","], "names nothing"], [["--limit", "0"], "--limit must be at least 1"],
                         [["--variants", "full", "window_2d:M=2"], "applies to vit models"]):
        code, _, err = run(capsys, "sweep", "--model", "minilm", "--variants", "full", *argv)
        assert code == 1 and needle in one_error_line(err)


def test_trace_out_is_never_overwritten_without_force(tmp_path, capsys, tokenizer):
    from tiny import tiny_text_model

    model = tmp_path / "m"
    tiny_text_model("gpt2").save_pretrained(model)
    tokenizer.save_pretrained(model)
    out = tmp_path / "d"
    argv = ["trace", "--model", str(model), "--text", "hello there", "--out", str(out)]
    assert run(capsys, *argv)[0] == 0
    before = (out / "manifest.json").read_bytes()
    code, _, err = run(capsys, *argv[:-4], "--text", "something else", "--out", str(out))
    assert code == 1 and "already exists; pass --force" in one_error_line(err)
    assert (out / "manifest.json").read_bytes() == before
    assert run(capsys, *argv[:-4], "--text", "something else", "--out", str(out), "--force")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["input"]["text"] == "something else"
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, *argv[:-1], str(tmp_path / "file"))  # an existing file: one line, not FileExistsError
    assert code == 1 and "already exists" in one_error_line(err)
    code, _, err = run(capsys, *argv[:-1], str(tmp_path / "file"), "--force")
    assert code == 1 and "not a trace folder" in one_error_line(err) and (tmp_path / "file").read_text() == "x"


def test_app_sets_the_servers_own_upload_limit(monkeypatch):
    """`attnscope app` gives Streamlit server.maxUploadSize (the widgets' own check runs in the browser only)."""
    from streamlit.web import cli as stcli

    from app.cli import main
    from app.session import MAX_UPLOAD_MB

    seen = {}
    monkeypatch.setattr(stcli, "main", lambda: seen.setdefault("argv", list(sys.argv)) and 0)
    monkeypatch.delenv("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", raising=False)
    main(["app"])
    argv = seen["argv"]
    assert argv[argv.index("--server.maxUploadSize") + 1] == str(MAX_UPLOAD_MB)
    seen.clear()
    main(["app", "--server.maxUploadSize", "5"])  # the user's own flag comes later and wins
    assert seen["argv"][-2:] == ["--server.maxUploadSize", "5"]


def test_streamlit_config_file_agrees_with_the_app():
    import tomllib
    from pathlib import Path

    from app.session import MAX_UPLOAD_MB

    config = tomllib.loads((Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB
