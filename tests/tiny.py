"""Tiny random-config models of each architecture family, built offline, and small inputs."""

from __future__ import annotations

import copy

import torch

TEXT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


def tiny_text_model(family: str):
    """A tiny random-config transformers model of one architecture family, built offline."""
    import transformers as tf

    torch.manual_seed(1)
    vocab = 30522
    if family == "bert":
        cfg = tf.BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model = tf.BertModel(cfg, add_pooling_layer=False)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "llama-gqa":
        cfg = tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            max_position_embeddings=128,
        )
        model = tf.LlamaForCausalLM(cfg)
    else:
        raise ValueError(family)
    model.config._attn_implementation = "eager"
    return model.eval()


def tiny_vit():
    import transformers as tf

    torch.manual_seed(2)
    cfg = tf.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    model = tf.ViTForImageClassification(cfg)
    model.config._attn_implementation = "eager"
    return model.eval()


def tiny_timm_vit():
    import timm

    torch.manual_seed(3)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        num_classes=5,
    ).eval()


def wrap_text(model, tokenizer):
    from models import hf_adapter

    return hf_adapter.wrap(copy.deepcopy(model), f"tiny-{model.config.model_type}", "test", tokenizer=tokenizer)


def wrap_vit(model):
    from transformers import ViTImageProcessor

    from models import hf_adapter

    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    return hf_adapter.wrap(
        copy.deepcopy(model), "tiny-vit", "test", image_processor=hf_adapter.hf_image_processor(proc)
    )


def sample_image(size=(40, 30), seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
