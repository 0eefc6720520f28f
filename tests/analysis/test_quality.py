"""Quality sweep: grids, sparsity, attention and output KL, task metrics, the `sweep` command, the views."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from tiny import TEXT, tiny_text_model, wrap_text

from analysis.quality import (
    PERPLEXITY_TEXT,
    digits_batches,
    expand_specs,
    mask_positions,
    paragraphs,
    sample_rows,
    sweep,
    text_batches,
)
from kernels.variants import VariantError, parse_variant

LONG = " ".join([TEXT] * 3)


# ---------------------------------------------------------------------------------------------
# grid syntax
# ---------------------------------------------------------------------------------------------


def test_expand_grid_is_the_product_in_parameter_order():
    assert expand_specs(["full", "sliding_window:w=32|64,sinks=0|4"]) == [
        "full",
        "sliding_window:w=32,sinks=0", "sliding_window:w=32,sinks=4",
        "sliding_window:w=64,sinks=0", "sliding_window:w=64,sinks=4",
    ]
    assert expand_specs("topk:k=8") == ["topk:k=8"]
    assert expand_specs(["full", "full"]) == ["full"]


def test_expand_grid_keeps_bracketed_values_whole():
    spec = "delta_correction:inner=[sliding_window:w=4|8,sinks=1],every=2|4"
    assert expand_specs(spec) == [
        "delta_correction:inner=[sliding_window:w=4|8,sinks=1],every=2",
        "delta_correction:inner=[sliding_window:w=4|8,sinks=1],every=4",
    ]


@pytest.mark.parametrize("spec,needle", [("sliding_window:w", "name=value"), ("sliding_window:w=4|", "empty")])
def test_expand_grid_errors(spec, needle):
    with pytest.raises(VariantError, match=needle):
        expand_specs(spec)


def test_sample_rows():
    assert sample_rows(10, 128).tolist() == list(range(10))
    rows = sample_rows(1000, 5).tolist()
    assert rows[0] == 0 and rows[-1] == 999 and len(rows) == 5


# ---------------------------------------------------------------------------------------------
# tiny language models
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tokenizer):
    stock = tiny_text_model("llama-gqa")
    return stock, wrap_text(stock, tokenizer)


def by_variant(result):
    return {r["variant"]: r for r in result.rows}


def test_full_is_lossless_and_a_window_is_not(llama):
    _, lm = llama
    res = by_variant(sweep(lm, ["full", "sliding_window:w=2,sinks=0"], batches=text_batches(lm, LONG)))
    full, win = res["full"], res["sliding_window:w=2,sinks=0"]
    assert full["sparsity"] == 1.0
    assert full["attn_kl"] == pytest.approx(0.0, abs=1e-9) and full["attn_mass_lost"] == 0.0
    assert full["output_kl"] == pytest.approx(0.0, abs=1e-9) and full["top1_agreement"] == 1.0
    assert win["attn_kl"] > 0.1 and win["attn_kl_max"] >= win["attn_kl"]
    assert 0 < win["attn_mass_lost"] < 1 and win["output_kl"] > 0


def test_per_head_kl_equals_compare_of_two_traces(llama):
    from analysis.compare import compare
    from models.tracer import trace

    _, lm = llama
    spec = "sliding_window:w=3,sinks=1"
    result = sweep(lm, [spec], batches=text_batches(lm, LONG))
    want = compare(trace(lm, text=LONG, variant="full"), trace(lm, text=LONG, variant=spec))
    np.testing.assert_allclose(result.heads[spec]["kl"], want.kl, rtol=1e-5)
    assert result.rows[0]["attn_mass_lost"] == pytest.approx(want.mass_lost.mean(), rel=1e-5)


def count_forwards(monkeypatch):
    import analysis.quality as quality

    calls = []
    real = quality.model_output
    monkeypatch.setattr(quality, "model_output", lambda lm, batch: calls.append(1) or real(lm, batch))
    return calls


def test_the_full_point_is_the_reference_run(llama, monkeypatch):
    """`full` on every layer is what the reference run computed: it is not run a second time."""
    _, lm = llama
    calls = count_forwards(monkeypatch)
    res = by_variant(sweep(lm, ["full", "sliding_window:w=2,sinks=0"], batches=text_batches(lm, LONG)))
    assert len(calls) == 2  # the reference and the window
    assert res["full"]["sparsity"] == 1.0 and res["full"]["attn_kl"] == 0.0 and res["full"]["output_kl"] == 0.0
    calls.clear()
    part = by_variant(sweep(lm, ["full"], batches=text_batches(lm, LONG), layers=[0]))  # a layer subset: runs
    assert len(calls) == 2 and part["full"]["attn_kl"] == pytest.approx(0.0, abs=1e-9)


def test_a_sweep_over_the_budget_is_refused_before_it_runs(llama, monkeypatch):
    from models.loaded import InputError

    _, lm = llama
    calls = count_forwards(monkeypatch)
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "0.000001")
    with pytest.raises(InputError, match="this sweep needs about .* GB but the memory budget is"):
        sweep(lm, ["sliding_window:w=2,sinks=0"], batches=text_batches(lm, LONG))
    assert not calls


def test_a_sweep_bounds_its_kl_rows_to_fit_the_budget(llama, monkeypatch):
    import analysis.quality as quality
    from models.memory import GB

    _, lm = llama
    batches = text_batches(lm, LONG)
    points = [quality._Point("w", parse_variant("sliding_window:w=2,sinks=0"), None)]
    need = {rows: quality.sweep_bytes(lm, batches, points, attention=True, kl_rows=rows) for rows in (16, 32)}
    assert need[32] > need[16]
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", repr((need[16] + need[32]) / 2 / GB))
    said = []
    row = sweep(lm, ["sliding_window:w=2,sinks=0"], batches=batches, kl_rows=64, progress=said.append).rows[0]
    assert "attention KL on 16 rows per input instead of 64" in said[0]
    assert row["attn_kl"] > 0 and row["sparsity"] < 1


def brute_force_sparsity(ctx, w: int, sinks: int) -> float:
    """Kept / allowed pairs of sliding_window, special tokens ([CLS], [SEP]) global as the catalogue says."""
    n, special = ctx.n, ctx.special.numpy()
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    allowed = j <= i if ctx.causal else np.ones((n, n), dtype=bool)
    kept = allowed & ((np.abs(i - j) <= w) | (j < sinks) | special[i] | special[j])
    return kept.sum() / allowed.sum()


@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
def test_sparsity_of_a_window_is_the_brute_force_count(family, tokenizer):
    lm = wrap_text(tiny_text_model(family), tokenizer)
    batches = text_batches(lm, LONG if family != "bert" else TEXT)
    spec = "sliding_window:w=3,sinks=2"
    result = sweep(lm, [spec], batches=batches)
    want = brute_force_sparsity(batches[0].enc.ctx, 3, 2)
    assert 0.1 < want < 0.7
    assert result.rows[0]["sparsity"] == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(result.heads[spec]["sparsity"], want, atol=1e-12)
    assert result.heads[spec]["kl"].shape == (lm.n_layers, lm.n_heads)


def test_sparsity_counts_every_row_when_kl_rows_is_small(llama):
    _, lm = llama
    batches = text_batches(lm, LONG)
    row = sweep(lm, ["sliding_window:w=3,sinks=0"], batches=batches, kl_rows=4).rows[0]
    assert row["sparsity"] == pytest.approx(brute_force_sparsity(batches[0].enc.ctx, 3, 0), abs=1e-12)


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2"])
def test_perplexity_equals_hf_loss(family, tokenizer):
    stock = tiny_text_model(family)
    lm = wrap_text(stock, tokenizer)
    batches = text_batches(lm, LONG)
    row = sweep(lm, ["full"], batches=batches).rows[0]
    inputs = batches[0].enc.inputs  # with a BERT tokenizer this has token_type_ids, which GPT-2 embeds
    ids = inputs["input_ids"]
    with torch.no_grad():
        loss = stock(**inputs, labels=ids).loss
    assert row["metric"] == "perplexity"
    assert row["value"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert row["n_tokens"] == ids.shape[1]


def test_max_tokens_truncates_and_attention_off_keeps_the_metric(llama):
    _, lm = llama
    batches = text_batches(lm, LONG, max_tokens=12)
    assert batches[0].enc.ctx.n == 12 and batches[0].enc.inputs["input_ids"].shape == (1, 12)
    assert batches[0].enc.token_ids == text_batches(lm, LONG)[0].enc.token_ids[:12]
    longer = text_batches(lm, " ".join([TEXT] * 20), max_tokens=40)  # over the model's 128 positions
    assert longer[0].enc.ctx.n == 40
    on = by_variant(sweep(lm, ["full", "topk:k=3"], batches=batches))
    off = by_variant(sweep(lm, ["full", "topk:k=3"], batches=batches, attention=False))
    for spec in on:
        assert off[spec]["sparsity"] is None and off[spec]["attn_kl"] is None
        assert off[spec]["value"] == pytest.approx(on[spec]["value"], rel=1e-5)


def test_masked_token_accuracy_matches_a_naive_count(tokenizer):
    import transformers as tf

    from models import hf_adapter

    torch.manual_seed(4)
    cfg = tf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    stock = tf.BertForMaskedLM(cfg).eval()
    lm = hf_adapter.wrap(copy.deepcopy(stock), "tiny-mlm", "test", tokenizer=tokenizer)
    text = "The river town woke slowly.\n\nFog sat on the water until the ferry bell rang and boats went out."
    batches = text_batches(lm, text)
    assert len(batches) == 2
    res = by_variant(sweep(lm, ["full", "sliding_window:w=1,sinks=0"], batches=batches))
    assert res["full"]["metric"] == "masked_accuracy" and res["full"]["output_kl"] == pytest.approx(0, abs=1e-9)
    correct = total = 0
    for i, (para, b) in enumerate(zip(paragraphs(text), batches)):
        enc = lm.encode_text(para)
        where = mask_positions(enc.ctx.special, seed=i)
        assert torch.equal(where, b.masked)
        ids = enc.inputs["input_ids"].clone()
        truth = ids[0, where].clone()
        ids[0, where] = tokenizer.mask_token_id
        with torch.no_grad():
            pred = stock(input_ids=ids).logits[0, where].argmax(-1)
        correct += int((pred == truth).sum())
        total += len(where)
    assert res["full"]["value"] == pytest.approx(correct / total)
    assert res["full"]["n_inputs"] == 2


def test_encoder_without_head_reports_embedding_cosine(tokenizer):
    lm = wrap_text(tiny_text_model("bert"), tokenizer)
    res = by_variant(sweep(lm, ["full", "sliding_window:w=1,sinks=0"], batches=text_batches(lm, TEXT)))
    assert res["full"]["metric"] == "embedding_cosine"
    assert res["full"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert res["sliding_window:w=1,sinks=0"]["value"] < 1.0
    assert res["full"]["output_kl"] is None and res["full"]["top1_agreement"] is None


def test_variant_for_another_kind_is_refused(llama):
    _, lm = llama
    with pytest.raises(VariantError, match="applies to vit"):
        sweep(lm, ["window_2d:M=2"], batches=text_batches(lm, TEXT))


# ---------------------------------------------------------------------------------------------
# a tiny digits ViT: batches through the injection
# ---------------------------------------------------------------------------------------------


def tiny_digits_vit():
    import transformers as tf

    from models import hf_adapter
    from models.digits_data import preprocess_image
    from models.loaded import to_display

    torch.manual_seed(5)
    cfg = tf.ViTConfig(image_size=32, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=10)
    stock = tf.ViTForImageClassification(cfg)
    stock.config._attn_implementation = "eager"
    stock.eval()

    def process(image):
        pv = preprocess_image(image)
        return pv, to_display(pv, [0.5], [0.5]), []

    return stock, hf_adapter.wrap(copy.deepcopy(stock), "tiny-digits", "test", image_processor=process)


def test_digits_accuracy_under_full_equals_the_stock_model_and_batching_is_exact():
    from models.digits_data import load_digits_split, to_pixel_values

    stock, lm = tiny_digits_vit()
    n = 40
    _, _, x_test, y_test = load_digits_split()
    with torch.no_grad():
        pred = stock(pixel_values=to_pixel_values(x_test[:n])).logits.argmax(-1).numpy()
    want = float((pred == y_test[:n]).mean())
    specs = ["full", "window_2d:M=2", "topk:k=8"]
    big = by_variant(sweep(lm, specs, batches=digits_batches(lm, limit=n, batch_size=16)))
    one = by_variant(sweep(lm, specs, batches=digits_batches(lm, limit=n, batch_size=1)))
    assert big["full"]["metric"] == "accuracy" and big["full"]["n_inputs"] == n
    assert big["full"]["value"] == pytest.approx(want)
    for spec, row in big.items():
        for key in ("value", "sparsity", "attn_kl", "output_kl", "top1_agreement"):
            assert row[key] == pytest.approx(one[spec][key], rel=1e-5, abs=1e-7), (spec, key)
    win = big["window_2d:M=2,shift=false"]
    assert win["sparsity"] < 0.25 and win["attn_kl"] > 0


# ---------------------------------------------------------------------------------------------
# the command and the views
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_text_model("llama-gqa").save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv):
    from app.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_command_json(llama_folder, tmp_path, capsys):
    text = tmp_path / "in.txt"
    text.write_text(LONG)
    code, out, err = run(capsys, "sweep", "--model", str(llama_folder), "--variants", "full",
                         "sliding_window:w=2|4,sinks=0", "--inputs", str(text), "--json", "--per-head")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["variant"] for r in rows] == ["full", "sliding_window:w=2,sinks=0", "sliding_window:w=4,sinks=0"]
    assert rows[0]["metric"] == "perplexity" and rows[0]["sparsity"] == 1.0
    assert np.array(rows[1]["kl_heads"]).shape == (2, 4)
    bar = [ln for ln in err.splitlines() if "forward passes ·" in ln]  # full, then the two windows
    assert bar and bar[-1].startswith("attnscope: sweep 3/3 forward passes")


def test_sweep_command_table(llama_folder, capsys):
    code, out, _ = run(capsys, "sweep", "--model", str(llama_folder), "--variants", "full", "topk:k=4",
                       "--max-tokens", "24", "--no-attention")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["variant", "kept"] and "perplexity" in lines[0]
    assert lines[1].startswith("full") and lines[2].startswith("topk:k=4") and "24 tokens" in lines[-1]


@pytest.mark.parametrize("argv,needle", [
    (["--variants", "no_such_variant"], "unknown variant"),
    (["--variants", "sliding_window:w=1|"], "empty alternative"),
    (["--variants", "window_2d"], "applies to vit"),
    (["--variants", "full", "--limit", "0"], "--limit must be at least 1"),
    (["--variants", "full", "--inputs", "/nonexistent.txt"], "does not exist"),
    (["--variants", "full", "--layers", "7"], "layers run 0..1"),
])
def test_sweep_command_errors_are_one_line(llama_folder, capsys, argv, needle):
    code, out, err = run(capsys, "sweep", "--model", str(llama_folder), *argv)
    assert code == 1 and not out
    lines = [ln for ln in err.splitlines() if ln.startswith("attnscope: error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_views_build_from_a_sweep(llama):
    from app.views.quality_view import curve_groups, damage_heatmap, tradeoff_figure

    _, lm = llama
    specs = ["full", "sliding_window:w=2|4,sinks=0|4"]
    result = sweep(lm, specs, batches=text_batches(lm, LONG, max_tokens=20))
    groups = curve_groups([r for r in result.rows if r["name"] != "full"])
    assert sorted(groups) == ["sliding_window sinks=0", "sliding_window sinks=4"]
    fig = tradeoff_figure(result.rows)
    assert len(fig.data) == 2 and all(len(t.x) == 2 for t in fig.data)
    assert "perplexity" in fig.layout.title.text
    spec = result.rows[1]["variant"]
    heat = damage_heatmap(result.heads[spec]["kl"], model=lm.model_id, variant=spec)
    assert np.asarray(heat.data[0].z).shape == (2, 4)


# ---------------------------------------------------------------------------------------------
# the presets
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_vit_accuracy_under_full_equals_stock(digits_vit):
    from transformers import ViTForImageClassification

    from models.digits_data import load_digits_split, to_pixel_values
    from models.registry import DIGITS_VIT_DIR

    stock = ViTForImageClassification.from_pretrained(DIGITS_VIT_DIR, attn_implementation="eager").eval()
    _, _, x_test, y_test = load_digits_split()
    with torch.no_grad():
        pred = stock(pixel_values=to_pixel_values(x_test)).logits.argmax(-1).numpy()
    row = sweep(digits_vit, ["full"]).rows[0]
    assert row["n_inputs"] == len(y_test)
    assert row["value"] == pytest.approx(float((pred == y_test).mean()))


@pytest.mark.slow
def test_smollm_perplexity_equals_hf_loss(smollm):
    batches = text_batches(smollm, PERPLEXITY_TEXT.read_text(encoding="utf-8"), max_tokens=96)
    row = sweep(smollm, ["full"], batches=batches, attention=False).rows[0]
    ids = batches[0].enc.inputs["input_ids"]
    with torch.no_grad():
        loss = smollm.module(input_ids=ids, labels=ids).loss
    assert row["value"] == pytest.approx(math.exp(float(loss)), rel=1e-4)


@pytest.mark.slow
def test_minilm_reports_embedding_cosine(minilm):
    res = by_variant(sweep(minilm, ["full", "sliding_window:w=2,sinks=0"], limit=2))
    assert res["full"]["metric"] == "embedding_cosine" and res["full"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert res["sliding_window:w=2,sinks=0"]["value"] < 0.999
