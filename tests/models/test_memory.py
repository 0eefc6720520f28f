"""The memory guard: estimates before running, pooled maps or a refusal over the budget."""

from __future__ import annotations

import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from models.loaded import InputError
from models.memory import estimate_bytes
from models.tracer import trace

LONG = " ".join([TEXT] * 30)  # ~450 tokens: more than the 256×256 pooled maps


@pytest.fixture(scope="module")
def llama(tokenizer):
    lm = wrap_text(tiny_text_model("llama-gqa"), tokenizer)
    lm.max_tokens = 4096  # rotary positions extend past the tiny config's 128
    return lm


def test_estimate_grows_with_dense_maps_and_qk(llama):
    n = 500
    pooled = estimate_bytes(llama, n, dense=False, qk=False)
    dense = estimate_bytes(llama, n, dense=True, qk=False)
    accumulator = llama.n_heads * 256 * 256 * 8  # the float64 sums of the pooled map being built
    assert dense - pooled == llama.n_layers * llama.n_heads * (n * n - 256 * 256) * 4 - accumulator
    assert estimate_bytes(llama, n, dense=False, qk=True) > pooled


def test_over_budget_switches_to_pooled_maps(llama, monkeypatch):
    n = len(llama.encode_text(LONG).tokens)
    between = (estimate_bytes(llama, n, dense=True, qk=False) + estimate_bytes(llama, n, dense=False, qk=False)) // 2
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", str(between / 1024**3))
    tr = trace(llama, text=LONG)
    assert not tr.dense and "L0_pooled" in tr.arrays
    assert any("kept pooled maps instead" in note for note in tr.notes)


def test_far_over_budget_is_refused_with_the_estimate(llama, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "0.000001")
    with pytest.raises(InputError, match=r"needs about [\d.]+ GB \(.*\) but the memory budget is"):
        trace(llama, text=TEXT)


# -- issue 15: a truthful estimate, a budget that is a size, one budget for concurrent requests ----------------
@pytest.mark.parametrize("n_words,qk", [(10, False), (10, True), (400, True)])
def test_the_recorder_part_is_what_the_trace_keeps(llama, n_words, qk):
    from models.memory import trace_estimate

    text = " ".join([TEXT] * (n_words // 10))
    tr = trace(llama, text=text, qk=qk, dense_limit=64)
    est = trace_estimate(llama, tr.n, dense=tr.dense, qk=qk)
    kept = sum(a.nbytes for k, a in tr.arrays.items() if k != "logits")
    accumulator = 0 if tr.dense else llama.n_heads * 256**2 * 8  # float64 sums of the pooled map being built
    assert abs(est.parts["maps"] + est.parts["recorder"] - accumulator - kept) <= 0.01 * kept
    assert {"maps", "recorder", "attention", "model", "save"} <= set(est.parts) and est.total > kept


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-2", "0", " 1e999 "])
def test_a_budget_that_is_not_a_size_is_one_line(monkeypatch, value):
    from models.memory import budget_bytes

    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", value)
    with pytest.raises(InputError, match="ATTNSCOPE_MEMORY_BUDGET_GB=.* is not a size; set it to a positive number"):
        budget_bytes()
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "1.5")
    assert budget_bytes() == int(1.5 * 1024**3)


def test_concurrent_requests_share_one_budget(llama, monkeypatch):
    """Two sessions of one app: while one trace runs, its estimate is held, so a second that would not fit beside
    it is refused in one line; once the first is done the second runs."""
    import threading

    from models.memory import trace_estimate

    n = len(llama.encode_text(LONG).tokens)
    one = trace_estimate(llama, n, dense=True, qk=False).total
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", str(1.5 * one / 1024**3))
    started, release, done = threading.Event(), threading.Event(), []

    def first():
        def hold(layer, total):
            started.set()
            release.wait(30)

        done.append(trace(llama, text=LONG, progress=hold))

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(60)
        with pytest.raises(InputError, match=r"GB of it held by requests running now"):
            trace(llama, text=LONG)
    finally:
        release.set()
        t.join(60)
    assert done and done[0].dense
    assert trace(llama, text=LONG).dense  # the first one's hold is released


def test_head_types_and_query_key_sets_are_refused_over_the_budget(llama, monkeypatch):
    from analysis.head_types import head_scores
    from analysis.qk_embed import collect

    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "0.001")
    with pytest.raises(InputError, match=r"the head types needs about [\d.]+ GB"):
        head_scores(llama, text=LONG)
    with pytest.raises(InputError, match=r"the query–key set of 3 inputs needs about"):
        collect(llama, [LONG, TEXT, TEXT], 0)
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "2")
    assert collect(llama, [TEXT, TEXT], 1).n_inputs == 2


def test_head_types_refuse_an_induction_input_longer_than_the_model_takes(llama):
    from analysis.head_types import head_scores

    with pytest.raises(InputError, match="takes at most 4096"):
        head_scores(llama, text=TEXT, length=3000)
    with pytest.raises(InputError, match="the induction length must be 1.."):
        head_scores(llama, text=TEXT, length=0)
