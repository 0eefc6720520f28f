"""Faithful first: with `full`, logits equal the stock eager model and probs equal output_attentions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny import TEXT, sample_image, tiny_text_model, tiny_timm_vit, tiny_vit, wrap_text, wrap_vit

from models.tracer import encode, trace

REL = 1e-4
PROB_ATOL = 1e-5


def assert_close_rel(ours: np.ndarray, ref: np.ndarray):
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err <= REL, f"relative error {err:.2e} > {REL}"


def eager_reference(lm, stock, enc):
    """Run the stock eager model on the same encoded input; returns (output, attentions)."""
    with torch.no_grad():
        out = stock(**enc.inputs, output_attentions=True)
    if lm.kind == "causal":
        output = out.logits[0, -1:]
    elif lm.kind == "vit":
        output = out.logits[0]
    else:
        output = out.last_hidden_state[0]
    return output.float().numpy(), [a[0].float().numpy() for a in out.attentions]


def check_trace(lm, stock, **inp):
    tr = trace(lm, **inp)
    ref_out, ref_attn = eager_reference(lm, stock, encode(lm, **inp))
    assert_close_rel(tr.logits, ref_out)
    assert len(ref_attn) == tr.n_layers
    for layer, ref in enumerate(ref_attn):
        probs = tr.attention(layer)
        assert probs.shape == ref.shape == (tr.n_heads, tr.n, tr.n)
        np.testing.assert_allclose(probs, ref, atol=PROB_ATOL, rtol=0)
    return tr


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama-gqa"])
def test_tiny_text_models_match_eager(family, tokenizer):
    stock = tiny_text_model(family)
    lm = wrap_text(stock, tokenizer)
    tr = check_trace(lm, stock, text=TEXT)
    if lm.kind == "causal":  # the causal mask survived injection (transformers #30652)
        assert np.triu(tr.attention(0), 1).max() == 0.0


def test_tiny_hf_vit_matches_eager():
    stock = tiny_vit()
    lm = wrap_vit(stock)
    tr = check_trace(lm, stock, image=sample_image())
    assert tr.grid == [4, 4] and tr.n == 17 and tr.special[0] and not any(tr.special[1:])


def test_tiny_timm_vit_matches_stock():
    from models import timm_adapter

    stock = tiny_timm_vit()
    lm = timm_adapter.wrap(copy.deepcopy(stock), "tiny-timm", "test")
    captured = []
    for block in stock.blocks:  # the unfused path hands the softmaxed map to attn_drop
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(i[0][0].numpy()))
    tr = trace(lm, image=sample_image())
    with torch.no_grad():
        ref = stock(encode(lm, image=sample_image()).inputs["x"])[0].numpy()
    assert_close_rel(tr.logits, ref)
    assert len(captured) == tr.n_layers == 2
    for layer, probs in enumerate(captured):
        np.testing.assert_allclose(tr.attention(layer), probs, atol=PROB_ATOL, rtol=0)


def _with_eager(lm):
    stock = lm.module
    stock.set_attn_implementation("eager")
    return stock


@pytest.mark.slow
@pytest.mark.parametrize("preset,inp", [
    ("minilm", {"text": TEXT}),
    ("smollm2-135m", {"text": TEXT}),
    ("digits-vit", {"image": "digit"}),
])
def test_presets_match_eager(preset, inp, request):
    from models.digits_data import digit_image

    lm = request.getfixturevalue({"minilm": "minilm", "smollm2-135m": "smollm", "digits-vit": "digits_vit"}[preset])
    if inp.get("image") == "digit":
        inp = {"image": digit_image(3)}
    tr = trace(lm, **inp)
    enc = encode(lm, **inp)
    stock = _with_eager(lm)
    try:
        ref_out, ref_attn = eager_reference(lm, stock, enc)
    finally:
        stock.set_attn_implementation("attnscope")
    assert_close_rel(tr.logits, ref_out)
    for layer, ref in enumerate(ref_attn):
        np.testing.assert_allclose(tr.attention(layer), ref, atol=PROB_ATOL, rtol=0)
    if preset == "smollm2-135m":  # GQA: 9 query heads share 3 key heads; q and k are per query head
        assert lm.n_heads == 9 and lm.module.config.num_key_value_heads == 3
