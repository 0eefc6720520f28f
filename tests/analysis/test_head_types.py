"""Head types: each score on hand-built attention patterns, the random repeated sequence, the
analysis on tiny models and on smollm2-135m, the `heads` command, the view."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import tiny_text_model, wrap_text

from analysis.head_types import (
    HeadScores,
    distance_score,
    head_scores,
    induction_score,
    ordinary_token_ids,
    previous_token_score,
    repeated_random_tokens,
    sequence_distances,
    sink_score,
)


def one_hot_rows(n: int, target) -> np.ndarray:
    """(N, N) attention where row i puts all its mass on key target(i)."""
    p = np.zeros((n, n))
    for i in range(n):
        p[i, target(i)] = 1.0
    return p


def test_induction_score_on_a_hand_built_pattern():
    start, length = 1, 6  # [BOS] r0..r5 r0..r5
    n = start + 2 * length

    def induction(i):  # second copy: the token after the first occurrence; elsewhere the BOS
        return i - length + 1 if i >= start + length else 0

    half = 0.5 * one_hot_rows(n, induction) + 0.5 * one_hot_rows(n, lambda i: 0)
    probs = np.stack([one_hot_rows(n, induction), one_hot_rows(n, lambda i: 0), half,
                      one_hot_rows(n, lambda i: max(i - 1, 0))])
    np.testing.assert_allclose(induction_score(probs, start, length), [1.0, 0.0, 0.5, 0.0])
    # the targets are causal: row start+length+t looks back to start+t+1
    assert all(induction(i) <= i for i in range(n))


def test_previous_token_sink_and_distance_scores():
    n = 8
    prev = one_hot_rows(n, lambda i: max(i - 1, 0))
    sink = one_hot_rows(n, lambda i: 0)
    diag = one_hot_rows(n, lambda i: i)
    probs = np.stack([prev, sink, diag])
    np.testing.assert_allclose(previous_token_score(probs), [1.0, 1 / 7, 0.0])
    np.testing.assert_allclose(sink_score(probs), [1 / 7, 1.0, 0.0])
    dist, allowed = sequence_distances(n, causal=True)  # the first token takes no part
    assert not allowed[:, 0].any()
    # previous token: row i (i ≥ 2) looks 1 back and its farthest counted key is i-1 back
    want_prev = np.mean([1 / (i - 1) for i in range(2, n)])
    d = distance_score(probs, dist, allowed)
    np.testing.assert_allclose(d[[0, 2]], [want_prev, 0.0])
    assert np.isnan(d[1])  # a pure sink head has no mass left to measure
    far = one_hot_rows(n, lambda i: 1 if i >= 2 else 0)  # always the farthest counted key
    assert distance_score(far[None], dist, allowed)[0] == pytest.approx(1.0)
    # bidirectional: the farthest counted key of row i is max(i-1, n-1-i) away
    dist_b, allowed_b = sequence_distances(n, causal=False)
    far_b = one_hot_rows(n, lambda i: 1 if i - 1 >= n - 1 - i else n - 1)
    assert distance_score(far_b[None], dist_b, allowed_b)[0] == pytest.approx(1.0)
    # the attention among counted keys is renormalised: half on the sink changes nothing
    half = 0.5 * sink + 0.5 * far
    assert distance_score(half[None], dist, allowed)[0] == pytest.approx(1.0)


def test_types_and_ranking():
    scores = {
        "previous_token": np.array([[0.9, 0.1], [0.0, 0.2]]),
        "induction": np.array([[0.0, 0.1], [0.6, 0.0]]),
        "sink": np.array([[0.0, 0.9], [0.7, 0.1]]),
        "distance": np.array([[0.1, 0.95], [0.5, 0.1]]),
    }
    hs = HeadScores("m", scores)
    assert hs.types().tolist() == [["previous-token", "sink"], ["induction", "local"]]
    assert [(h["layer"], h["head"]) for h in hs.top("sink", 2)] == [(0, 1), (1, 0)]
    assert [(h["layer"], h["head"]) for h in hs.top("local", 2)] == [(0, 0), (1, 1)]
    assert hs.top("global", 1)[0]["score"] == pytest.approx(0.95)
    data = hs.to_json(1)
    assert set(data["top"]) == {"previous_token", "induction", "sink", "local", "global"}
    json.dumps(data)


def test_repeated_random_tokens_are_ordinary_distinct_and_deterministic(tokenizer):
    ids, start = repeated_random_tokens(tokenizer, 20, seed=3)
    assert start == 1 and ids[0] == tokenizer.cls_token_id  # BERT has no BOS: its CLS leads
    r = ids[1:21]
    assert ids[21:] == r and len(set(r)) == 20
    assert not set(r) & set(tokenizer.all_special_ids)
    assert not any(t.startswith("[") for t in tokenizer.convert_ids_to_tokens(r))
    assert repeated_random_tokens(tokenizer, 20, seed=3) == (ids, start)
    assert repeated_random_tokens(tokenizer, 20, seed=4)[0] != ids
    assert len(ordinary_token_ids(tokenizer)) > 20000


@pytest.mark.parametrize("family", ["llama-gqa", "bert"])
def test_head_scores_on_tiny_models(family, tokenizer):
    lm = wrap_text(tiny_text_model(family), tokenizer)
    text = "The river town woke slowly that morning, and the ferry bell rang twice over the water."
    a = head_scores(lm, text=text, length=16)
    b = head_scores(lm, text=text, length=16)
    for name, values in a.scores.items():
        assert values.shape == (lm.n_layers, lm.n_heads)
        assert np.all((values >= -1e-6) & (values <= 1 + 1e-6)), name
        np.testing.assert_array_equal(values, b.scores[name])
    assert a.types().shape == (lm.n_layers, lm.n_heads)


def test_heads_on_a_vit_have_no_token_scores():
    from test_quality import tiny_digits_vit

    _, lm = tiny_digits_vit()
    hs = head_scores(lm)
    assert np.isnan(hs.scores["induction"]).all() and np.isnan(hs.scores["previous_token"]).all()
    assert np.isfinite(hs.scores["sink"]).all() and np.isfinite(hs.scores["distance"]).all()
    assert hs.top("induction") == []


def test_heads_command(tmp_path, tokenizer, capsys):
    from app.cli import main

    tiny_text_model("llama-gqa").save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    assert main(["heads", "--model", str(tmp_path), "--json", "--top", "3", "--length", "10"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["top"]["induction"]) == 3 and np.array(data["scores"]["sink"]).shape == (2, 4)
    assert main(["heads", "--model", str(tmp_path), "--length", "10"]) == 0
    out = capsys.readouterr().out
    assert "induction" in out and "L" in out
    assert main(["heads", "--model", str(tmp_path), "--top", "0"]) == 1
    assert "--top must be at least 1" in capsys.readouterr().err


def test_head_type_view():
    from app.views.quality_view import head_type_heatmaps

    rng = np.random.default_rng(0)
    scores = {n: rng.random((3, 4)) for n in ("previous_token", "induction", "sink", "distance")}
    scores["induction"][:] = np.nan  # a ViT: the panel is left out
    fig = head_type_heatmaps(scores, model="m")
    assert len(fig.data) == 3 and np.asarray(fig.data[0].z).shape == (3, 4)


@pytest.mark.slow
def test_smollm_has_induction_and_sink_heads(smollm):
    hs = head_scores(smollm)
    assert hs.scores["induction"].shape == (30, 9)
    assert hs.scores["induction"].max() > 0.3  # the acceptance
    assert hs.scores["sink"].max() > 0.5
    assert "induction" in set(hs.types().ravel())
