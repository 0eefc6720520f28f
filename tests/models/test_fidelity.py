"""Faithful first: with `full`, the presets' logits equal the stock eager model and probs equal output_attentions.

Tiny random-config models of every family are checked the same way in test_zoo.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny import TEXT
from zoo import stock_hf

from models.tracer import encode, trace

REL = 1e-4
PROB_ATOL = 1e-5


def assert_close_rel(ours: np.ndarray, ref: np.ndarray):
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err <= REL, f"relative error {err:.2e} > {REL}"


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
        ref_out, ref_attn = stock_hf(lm, stock, enc)
    finally:
        stock.set_attn_implementation("attnscope")
    assert_close_rel(tr.logits, ref_out)
    for layer, ref in enumerate(ref_attn):
        np.testing.assert_allclose(tr.attention(layer), ref, atol=PROB_ATOL, rtol=0)
    if preset == "smollm2-135m":  # GQA: 9 query heads share 3 key heads; q and k are per query head
        assert lm.n_heads == 9 and lm.module.config.num_key_value_heads == 3
