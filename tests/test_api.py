"""The public Python API (`import attnscope`): traces of models the caller holds, views, compare, sweep."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import timm.data
import torch
from tiny import TEXT, sample_image, tiny_text_model, tiny_timm_vit, tiny_vit

import attnscope
from analysis.compare import compare as compare_traces
from kernels.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def module_state(model: torch.nn.Module) -> dict:
    """What attaching may change, per submodule: its attribute names (and identities), mode and hooks."""
    state = {}
    for name, m in model.named_modules():
        hooks = {k: dict(v) for k, v in vars(m).items() if "hooks" in k and isinstance(v, dict)}
        state[name] = ({k: id(v) for k, v in vars(m).items()}, m.training, hooks)
    return state


def assert_untouched(model, before: dict) -> None:
    after = module_state(model)
    assert after == before
    for name, m in model.named_modules():
        assert "forward" not in vars(m), f"{name} kept an instance forward"
        assert not [k for k in vars(m) if k.startswith("_attnscope")], f"{name} kept attnscope attributes"


def _llama(impl: str, train: bool):
    model = tiny_text_model("llama-gqa")
    model.set_attn_implementation(impl)
    return model.train(train)


def test_trace_of_a_held_transformers_model_equals_eager_and_leaves_it_as_it_was(tokenizer):
    model = _llama("eager", train=False)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(ids, output_attentions=True)
    before = module_state(model)

    tr = attnscope.trace(model, tokenizer=tokenizer, text=TEXT)

    assert tr.n_layers == 2 and tr.n_heads == 4 and tr.token_ids == ids[0].tolist()
    for layer, probs in enumerate(ref.attentions):
        np.testing.assert_allclose(tr.attention(layer), probs[0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(tr.logits, ref.logits[0, -1:].numpy(), rtol=0, atol=1e-4 * ref.logits.abs().max())
    assert model.config._attn_implementation == "eager"
    assert_untouched(model, before)
    with torch.no_grad():
        again = model(ids, output_attentions=True)
    assert torch.equal(again.logits, ref.logits)
    assert all(torch.equal(a, b) for a, b in zip(again.attentions, ref.attentions))


@pytest.mark.parametrize("cls,config,kw", [
    ("LlamaModel", "LlamaConfig", dict(num_key_value_heads=2)),  # a base decoder: no LM head, no `architectures`
    ("BloomModel", "BloomConfig", dict(n_layer=2, n_head=4)),  # its attention module carries no is_causal flag
])
def test_a_base_decoder_without_its_head_is_traced_causal_as_eager_runs_it(tokenizer, cls, config, kw):
    import transformers as tf

    torch.manual_seed(0)
    cfg = getattr(tf, config)(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, attn_implementation="eager", **kw)
    model = getattr(tf, cls)(cfg).eval()
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(ids, output_attentions=True)
    tr = attnscope.trace(model, tokenizer=tokenizer, text=TEXT)
    for layer, probs in enumerate(ref.attentions):
        np.testing.assert_allclose(tr.attention(layer), probs[0].numpy(), atol=1e-5, rtol=0)
    assert np.triu(tr.attention(0)[0], 1).max() == 0.0
    assert tr.kind == "causal" and tr.output_kind == "hidden"  # variants see a causal context; states, not logits


def test_train_mode_sdpa_and_dtype_are_restored_even_after_an_error(tokenizer):
    model = _llama("sdpa", train=True).to(torch.float64)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model(ids).logits
    before = module_state(model)
    with pytest.raises(UserError, match="layers"):  # raised inside the attached call, after wrapping
        attnscope.trace(model, tokenizer=tokenizer, text=TEXT, layers=[7])
    assert_untouched(model, before)
    cmp = attnscope.compare(model, TEXT, "full", "sliding_window:w=2", tokenizer=tokenizer)
    assert cmp.a.attention(0).shape == (4, cmp.a.n, cmp.a.n) and cmp.stats.mass_lost.max() > 0
    assert model.training and model.config._attn_implementation == "sdpa"
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert_untouched(model, before)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def test_trace_of_a_held_timm_model_equals_stock_and_leaves_it_as_it_was():
    model = tiny_timm_vit()
    stock = copy.deepcopy(model)
    captured = []
    for block in stock.blocks:  # the unfused path hands the softmaxed map to attn_drop
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(i[0][0].numpy()))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before_out = model(x)
    model.train()
    before = module_state(model)

    image = sample_image((32, 32))
    tr = attnscope.trace(model, image=image)

    cfg = timm.data.resolve_model_data_config(model)  # the model's own transform, at its own size
    cfg["input_size"] = (3, 32, 32)
    with torch.no_grad():
        ref = stock(timm.data.create_transform(**cfg)(image)[None])[0].numpy()
    np.testing.assert_allclose(tr.logits, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert len(captured) == tr.n_layers == 2
    for layer, probs in enumerate(captured):
        np.testing.assert_allclose(tr.attention(layer), probs, atol=1e-5, rtol=0)
    assert_untouched(model, before)
    assert model.training
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before_out)


def test_held_hf_vit_needs_and_uses_its_image_processor():
    from transformers import ViTImageProcessor

    model = tiny_vit()
    before = module_state(model)
    with pytest.raises(UserError, match="image_processor"):
        attnscope.trace(model, image=sample_image())
    tr = attnscope.trace(model, image=np.asarray(sample_image()),
                         image_processor=ViTImageProcessor(size={"height": 32, "width": 32}))
    assert tr.grid == [4, 4] and tr.image.shape == (32, 32, 3)
    assert_untouched(model, before)


@pytest.mark.parametrize("call,match", [
    (lambda m, t: attnscope.trace(m, text=TEXT), "pass its tokenizer"),
    (lambda m, t: attnscope.trace(m, tokenizer=t), "exactly one input"),
    (lambda m, t: attnscope.trace(m, tokenizer=t, text=TEXT, image=sample_image()), "exactly one input"),
    (lambda m, t: attnscope.trace(m, tokenizer=t, text=["a"]), "text must be a str"),
    (lambda m, t: attnscope.trace(m, tokenizer=t, text=TEXT, heads="0,1"), "heads must be"),
    (lambda m, t: attnscope.trace(m, tokenizer=t, text=TEXT, variant="nope"), "nope"),
    (lambda m, t: attnscope.trace(m, tokenizer=t, image_processor=t, text=TEXT), "image_processor"),
    (lambda m, t: attnscope.trace(torch.nn.Linear(2, 2), text=TEXT), "cannot trace a Linear"),
    (lambda m, t: attnscope.compare(m, TEXT, "full", tokenizer=t), "variant_b"),
    (lambda m, t: attnscope.compare(m, TEXT, "full", "sliding_window:w=-1", tokenizer=t), "out of range"),
])
def test_bad_calls_end_in_one_line_and_leave_the_model_alone(call, match, tokenizer):
    model = _llama("eager", train=False)
    before = module_state(model)
    with pytest.raises(UserError, match=match) as info:
        call(model, tokenizer)
    assert "\n" not in str(info.value)
    assert_untouched(model, before)


def test_a_loaded_model_refuses_a_second_tokenizer(minilm, tokenizer):
    with pytest.raises(UserError, match="carries its own"):
        attnscope.trace(minilm, text=TEXT, tokenizer=tokenizer)


def test_one_attach_at_a_time_per_model(tokenizer):
    from models.attach import attached

    model = _llama("eager", train=False)
    with attached(model, tokenizer=tokenizer), pytest.raises(UserError, match="one call at a time"):
        attnscope.trace(model, tokenizer=tokenizer, text=TEXT)
    attnscope.trace(model, tokenizer=tokenizer, text=TEXT)  # released afterwards


@pytest.fixture(scope="module")
def vit_traces():
    from models.digits_data import digit_image
    from models.registry import load

    lm = load("digits-vit")
    return attnscope.trace(lm, image=digit_image(3), qk=True), attnscope.compare(
        lm, variant_a="full", variant_b="window_2d:M=2", image=digit_image(3))


def test_every_catalogue_view_is_a_figure(vit_traces):
    tr, cmp = vit_traces
    assert set(attnscope.VIEWS) == {"model", "head", "neuron", "image", "qk", "mask", "compare", "metrics"}
    figures = {name: attnscope.view(cmp if name == "compare" else tr, name) for name in attnscope.VIEWS}
    assert all(isinstance(f, go.Figure) and f.data for f in figures.values())
    head = attnscope.view(tr, "head", layer=3, head=2)
    np.testing.assert_array_equal(np.array(head.data[0].z), tr.attention(3)[2])
    assert attnscope.view((cmp.a, cmp.b), "compare", layer=1, head=0).data
    np.testing.assert_allclose(cmp.stats.kl, compare_traces(cmp.a, cmp.b).kl)
    assert cmp.b.variant.startswith("window_2d:M=2") and cmp.stats.kl.shape == (4, 4) and cmp.stats.kl.max() > 0


def test_view_refuses_unknown_names_keys_and_data(vit_traces):
    tr, _ = vit_traces
    with pytest.raises(UserError, match="unknown view"):
        attnscope.view(tr, "heads")
    with pytest.raises(UserError, match="does not take layr"):
        attnscope.view(tr, "head", layr=1)
    with pytest.raises(UserError, match="layer 9 does not exist"):
        attnscope.view(tr, "head", layer=9)
    with pytest.raises(UserError, match="needs two traces"):
        attnscope.view(tr, "compare")


def test_save_and_open_trace(vit_traces, tmp_path):
    tr, _ = vit_traces
    again = attnscope.open_trace(tr.save(tmp_path / "t"))
    assert isinstance(again, attnscope.Trace) and again.variant == tr.variant
    for layer in range(tr.n_layers):
        np.testing.assert_array_equal(again.attention(layer), tr.attention(layer))
        np.testing.assert_array_equal(again.q(layer), tr.q(layer))
        np.testing.assert_array_equal(again.lse(layer), tr.lse(layer))
        np.testing.assert_array_equal(again.stat(layer, "entropy"), tr.stat(layer, "entropy"))


def test_sweep_of_a_held_model_on_given_text(tokenizer):
    model = _llama("eager", train=False)
    before = module_state(model)
    result = attnscope.sweep(model, ["sliding_window:w=2|4"], text=TEXT, tokenizer=tokenizer)
    rows = {r["variant"]: r for r in result.table()}
    narrow, wide = rows["sliding_window:w=2,sinks=auto"], rows["sliding_window:w=4,sinks=auto"]
    assert len(rows) == 2 and narrow["metric"] == "perplexity" and narrow["value"] > 0
    assert narrow["n_tokens"] == len(tokenizer(TEXT)["input_ids"])  # the given text, not the shipped one
    assert 0 < narrow["sparsity"] < wide["sparsity"] < 1  # the wider window keeps more scores
    assert_untouched(model, before)


def test_user_error_is_the_one_base():
    assert attnscope.UserError is UserError
    with pytest.raises(AttributeError):
        attnscope.nothing_here  # noqa: B018


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_is_cheap():
    proc = _python("import sys, attnscope; print(sorted(m for m in ('torch', 'numpy', 'plotly', 'transformers', "
                   "'streamlit') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_load_trace_view_from_plain_python_without_streamlit():
    proc = _python(
        "import sys, attnscope\n"
        "from models.digits_data import digit_image\n"
        "fig = attnscope.view(attnscope.trace(attnscope.load('digits-vit'), image=digit_image(3)), 'image', layer=0)\n"
        "streamlit = 'streamlit' in sys.modules\n"
        "import plotly.graph_objects as go\n"
        "print(isinstance(fig, go.Figure), len(fig.data) > 0, streamlit)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True True False"


def test_the_package_is_installed_with_the_project():
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "attnscope" in find_packages(str(ROOT), include=config["include"])
