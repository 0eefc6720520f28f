"""The model's own attention kept through injection: windows, biases in the mask, refusals, undo, the pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_zoo import engine, wordpiece  # noqa: F401  (fixtures)
from tiny import TEXT, sample_image
from zoo import by_name, wrap

from app.cli import main
from kernels.errors import user_message
from kernels.native import PLAIN
from models.inject import ModelMask, split_dense_mask
from models.loaded import ModelError
from models.trace import Trace
from models.tracer import trace


def _mask(fn, n, **kw) -> ModelMask:
    return ModelMask(1, n, n, 0, 0, fn, None, **kw)


def test_sliding_window_survives_the_lazy_mask():
    """transformers' sdpa_mask skips a windowed mask unless told its window (local_size): the bug that made
    Mistral, Gemma 2/3 and GPT-OSS sliding layers see every key."""
    from transformers.masking_utils import (
        sliding_window_bidirectional_mask_function,
        sliding_window_causal_mask_function,
    )

    n, w = 12, 4
    i, j = np.indices((n, n))
    for fn, want, skip in [
        (sliding_window_causal_mask_function(w), (j <= i) & (i - j < w), False),
        (sliding_window_bidirectional_mask_function(w), np.abs(i - j) <= w, True),  # ModernBERT's local layers
    ]:
        mask = _mask(fn, n, local_size=w, allow_is_bidirectional_skip=skip)
        np.testing.assert_array_equal(mask.rows(0, n)[0, 0].numpy(), want)
        np.testing.assert_array_equal(mask.rows(5, 9)[0, 0].numpy(), want[5:9])
        b, h = torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long)
        mod = mask.mask_mod(b, h, torch.arange(n)[None, None, :, None], torch.arange(n)[None, None, None, :])
        np.testing.assert_array_equal(mod[0, 0].numpy(), want)


def test_a_bias_added_to_the_mask_becomes_a_pair_bias():
    """BEiT adds its relative position bias to the mask object: keep and bias are separated again."""
    from transformers.masking_utils import bidirectional_mask_function

    n, heads = 5, 2
    padding = torch.tensor([[True] * 4 + [False]])
    mask = ModelMask(1, n, n, 0, 0, bidirectional_mask_function, padding)
    bias = torch.randn(1, heads, n, n)
    keep, native = split_dense_mask(bias + mask, PLAIN, heads)
    np.testing.assert_array_equal(keep.rows(0, n)[0, 0, :, -1].numpy(), False)
    assert keep.rows(0, n)[0, 0, :, :4].all()
    np.testing.assert_allclose(native.pair_bias[..., :4], bias[..., :4])


def test_cli_trace_of_a_local_mistral_keeps_its_window(tmp_path, capsys, tokenizer):
    """`attnscope trace` on a folder holding a tiny Mistral whose window (4) is shorter than the text."""
    folder = tmp_path / "mistral"
    by_name("mistral").build().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(["trace", "--model", str(folder), "--text", TEXT, "--out", str(tmp_path / "t")]) == 0
    tr = Trace.load(tmp_path / "t")
    assert tr.native == ["sliding window 4"] * 2
    i, j = np.indices((tr.n, tr.n))
    outside = i - j >= 4
    assert outside.any()
    for layer in range(tr.n_layers):
        probs = tr.attention(layer)
        assert (probs[:, outside] == 0.0).all()
        assert (probs[:, (i - j < 4) & (j <= i)] > 0).all()


def test_variant_on_top_never_widens_the_model_window(tokenizer):
    lm = wrap(by_name("mistral"), by_name("mistral").build(), tokenizer)
    tr = trace(lm, text=TEXT, variant="sliding_window:w=12")
    i, j = np.indices((tr.n, tr.n))
    for layer in range(tr.n_layers):
        assert tr.attention(layer)[:, i - j >= 4].max() == 0.0


@pytest.mark.parametrize("build,needle", [
    (lambda: _tiny("DebertaV2Model", "DebertaV2Config"), "'deberta-v2' is not supported: its attention module"),
    (lambda: _tiny("FalconForCausalLM", "FalconConfig", alibi=True), "'falcon' is not supported: Falcon with ALiBi"),
    (lambda: _tiny("SwinModel", "SwinConfig", base={}, image_size=32, patch_size=4, embed_dim=16, depths=[1],
                   num_heads=[2], window_size=4), "'swin' is not supported: its attention runs on window batches"),
    (lambda: _tiny("T5Model", "T5Config", d_model=16, d_ff=16, num_layers=1, num_heads=2), "encoder–decoder"),
])
def test_refused_family_says_so_in_one_line(build, needle):
    from models import hf_adapter

    with pytest.raises(ModelError) as err:
        hf_adapter.wrap(build(), "m", "test")
    line = user_message(err.value)
    assert needle in line and "model family table in the README" in line and "\n" not in line


def test_refused_family_on_the_command_line(tmp_path, capsys, tokenizer):
    folder = tmp_path / "deberta"
    _tiny("DebertaV2Model", "DebertaV2Config").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    code = main(["trace", "--model", str(folder), "--text", TEXT, "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert "'deberta-v2' is not supported" in lines[0] and "README" in lines[0]
    assert not (tmp_path / "t").exists()


def test_a_family_refused_by_its_config_is_refused_before_its_weights_load(tmp_path):
    from models.registry import load

    folder = tmp_path / "t5"
    _tiny("T5Model", "T5Config", d_model=16, d_ff=16, num_layers=1, num_heads=2).save_pretrained(folder)
    said = []
    with pytest.raises(ModelError, match="encoder–decoder"):
        load(str(folder), progress=said.append)
    assert said and not any("weights" in m for m in said), said


TEXT_BASE = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)


def _tiny(cls: str, config: str, base: dict = TEXT_BASE, **kw):
    import transformers as tf

    return getattr(tf, cls)(getattr(tf, config)(**{**base, **kw}))


@pytest.mark.parametrize("name", ["llama", "bloom", "timm-vit", "timm-swin"])
def test_attached_model_is_given_back_unchanged(name, wordpiece, engine):  # noqa: F811
    """The API attaches attnscope to a model the user holds (models.attach): every family's hooks are instance
    attributes, so its restore gives the model back as it was."""
    from models.attach import attached

    entry = by_name(name)
    model = entry.build().train()  # wrap puts it in eval; the restore must bring this back
    inp = {"image": sample_image()} if entry.image else {"text": TEXT}
    before = _state(model)
    with attached(model, **({} if entry.image else {"tokenizer": wordpiece})) as lm:
        x = lm.encode_image(inp["image"]).inputs["x"] if entry.image else lm.encode_text(TEXT).inputs["input_ids"]
        trace(lm, **inp)
        assert _state(model) != before
    assert _state(model) == before
    fresh = entry.build().train()
    torch.manual_seed(0)  # dropout is on again: same seed, same draws
    got = model(x)
    torch.manual_seed(0)
    want = fresh(x)
    got, want = (o if isinstance(o, torch.Tensor) else o.logits for o in (got, want))
    torch.testing.assert_close(got, want)


def _state(model) -> list:
    """What wrap may change: instance attributes attnscope sets, attention implementations, training flags."""
    out = []
    for name, m in model.named_modules():
        out.append((name, m.training, sorted(k for k in m.__dict__ if k in ("forward", "_attn") or "attnscope" in k)))
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            out.append((name, config._attn_implementation_internal))
    return out


def test_pattern_is_in_the_trace_and_its_summary(tokenizer, engine):  # noqa: F811
    from models.pattern import summarise

    lm = wrap(by_name("gemma2"), by_name("gemma2").build(), tokenizer)
    tr = trace(lm, text=TEXT)
    assert tr.native == ["sliding window 4 · softcap 2", "global · softcap 2"]
    assert summarise(tr.native) == "layer 0: sliding window 4 · softcap 2; layer 1: global · softcap 2"
    gpt_oss = wrap(by_name("gpt_oss"), by_name("gpt_oss").build(), tokenizer)
    assert gpt_oss.native_pattern == ["sliding window 4 · learned sinks", "global · learned sinks"]


def test_swin_own_mask_on_the_patch_grid():
    """The Mask lab's picture of Swin: windows of the patch grid, shifted ones split by the shift regions."""
    entry = by_name("timm-swin")
    lm = wrap(entry, entry.build(), None)
    assert lm.native_pattern == [
        "window 4×4 · relative position bias",
        "shifted window 4×4 (shift 2) · relative position bias",
        "window 4×4 · on 2×2 merged patches · relative position bias",
        "shifted window 4×4 (shift 2) · on 2×2 merged patches · relative position bias",
    ]
    n = 256
    plain, shifted = lm.native_mask(0, n), lm.native_mask(1, n)
    assert plain.shape == (n, n) and plain.dtype == bool
    assert plain.sum(1).tolist() == [16] * n  # 16 windows of 4×4 patches
    assert (shifted.sum(1) <= 16).all() and (shifted.sum(1) < 16).any() and (plain != shifted).any()
    assert lm.native_mask(2, n).sum(1).tolist() == [64] * n  # 4×4 cells of 2×2 patches


def test_a_layer_that_does_not_attend_over_the_input_tokens_is_refused():
    """Windows run as batches or dropped patches cannot be drawn on the input: one line, never a wrong map."""
    from kernels.context import TokenContext
    from models.inject import FULL, CallPlan, plan, run_attention

    q = torch.randn(4, 2, 3, 8)  # e.g. 4 windows of 3 tokens, for an input of 12 tokens
    with plan(CallPlan(FULL, TokenContext.vit((3, 4), n_prefix=0))), pytest.raises(ModelError) as err:
        run_attention(torch.nn.Linear(1, 1), q, q, q, None, 0.35)
    assert "attends 3 queries to 3 keys, not the input's 12 tokens" in user_message(err.value)
