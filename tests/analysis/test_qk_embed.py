"""Query–key embeddings: the normalisation's invariances, seeded projections, fields, the real presets."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import qk_embed as qe


def softmax_rows(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def rand_qk(t=40, d=16, seed=0):
    rng = np.random.default_rng(seed)
    # keys far from the queries and with a different scale, as in real heads
    return rng.normal(size=(t, d)) * 0.5 + 1.0, rng.normal(size=(t, d)) * 3.0 - 2.0


def test_key_translation_keeps_every_softmax_row():
    q, k = rand_qk()
    scale = q.shape[1] ** -0.5
    n = qe.normalise(q, k)
    before, after = q @ k.T * scale, n.q @ n.k.T * scale
    assert not np.allclose(before, after)  # the scores do change...
    shift = after - before  # ...by one constant per query (row)...
    np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], 1), atol=1e-9)
    np.testing.assert_allclose(softmax_rows(after), softmax_rows(before), atol=1e-12)  # ...so rows are unchanged
    # the same with a causal mask: the constant is the same over the keys a query may see
    causal = np.tril(np.ones_like(before, dtype=bool))
    masked = [softmax_rows(np.where(causal, s, -np.inf)) for s in (before, after)]
    np.testing.assert_allclose(masked[1], masked[0], atol=1e-12)


def test_centroids_meet_and_scaling_keeps_dot_products():
    q, k = rand_qk(seed=1)
    n = qe.normalise(q, k)
    np.testing.assert_allclose(n.q.mean(0), n.k.mean(0), atol=1e-12)
    only_scale = qe.normalise(q, k, translate=False)
    np.testing.assert_allclose(only_scale.q @ only_scale.k.T, q @ k.T, rtol=1e-12)
    norms = [np.linalg.norm(a, axis=1).mean() for a in (only_scale.q, only_scale.k)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-12)
    mean_norm = lambda a: np.linalg.norm(a, axis=1).mean()
    assert only_scale.scale == pytest.approx(np.sqrt(mean_norm(k) / mean_norm(q)))


# 3D t-SNE runs the same code path as 2D and is slow, so it is left out (not skipped)
@pytest.mark.parametrize("method,dims", [(m, d) for m in qe.METHODS for d in (2, 3) if (m, d) != ("tsne", 3)])
def test_seeded_projections_are_deterministic(method, dims):
    x = np.random.default_rng(2).normal(size=(120, 8))
    a, b = (qe.project(x, method, dims, seed=3) for _ in range(2))
    assert a.shape == (120, dims) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_umap_reports_progress():
    seen = []
    qe.project(np.random.default_rng(4).normal(size=(80, 6)), "umap", 2, progress=lambda f, m: seen.append((f, m)))
    assert any("epoch" in m for _, m in seen) and seen[-1][0] == 1.0
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)


def test_bad_arguments_are_clear():
    x = np.zeros((20, 4))
    with pytest.raises(ValueError, match="unknown projection"):
        qe.project(x, "mds")
    with pytest.raises(ValueError, match="dims"):
        qe.project(x, "pca", 4)


def fake_set(h=3, lengths=(5, 7, 6), d=8, seed=5) -> qe.QKSet:
    rng = np.random.default_rng(seed)
    t = sum(lengths)
    probs = []
    for n in lengths:
        p = rng.random((h, n, n))
        probs.append(p / p.sum(-1, keepdims=True))
    tokens = [f"w{i}" for i in range(t)]
    return qe.QKSet(
        model_id="fake", kind="bidirectional", layer=1, q=rng.normal(size=(h, t, d)), k=rng.normal(size=(h, t, d)),
        tokens=tokens, token_kind=["word"] * t, context=[f"«{w}»" for w in tokens],
        input_index=np.repeat(np.arange(len(lengths)), lengths),
        position=np.concatenate([np.arange(n) for n in lengths]), offsets=np.cumsum([0, *lengths]),
        probs=probs, inputs=[f"text {i}" for i in range(len(lengths))], names=["a", "b", "c"],
        inputs_hash=f"fake{seed}",
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_embedding_shapes_and_fields(dims):
    qks = fake_set()
    emb = qe.embed(qks, 1, "pca", dims)
    t = qks.n_tokens
    assert emb.coords.shape == (2 * t, dims) and len(emb) == 2 * t
    assert (emb.role[:t] == "query").all() and (emb.role[t:] == "key").all()
    for name in qe.FIELDS:
        assert len(emb.field(name)) == 2 * t
    np.testing.assert_allclose(emb.norm[:t], np.linalg.norm(qks.q[1], axis=1), rtol=1e-6)
    np.testing.assert_allclose(emb.norm[t:], np.linalg.norm(qks.k[1], axis=1), rtol=1e-6)
    np.testing.assert_array_equal(emb.field("position"), np.concatenate([qks.position, qks.position]))
    with pytest.raises(ValueError, match="cannot colour"):
        emb.field("colour")
    assert set(emb.table()) >= {"x0", "x1", "role", "token", "token_kind", "position", "input", "norm", "context"}
    assert emb.point(t)["role"] == "key"
    assert qe.embed(qks, 1, "pca", dims) is emb  # cached


def test_all_heads_and_attention_rows():
    qks = fake_set()
    heads = qe.all_heads(qks, max_tokens=10)
    assert [e.head for e in heads] == [0, 1, 2] and all(e.coords.shape == (20, 2) for e in heads)
    emb = qe.embed(qks, 2)
    t = qks.n_tokens
    i = 8  # token 8: input 1, position 3
    row = qe.attention_row(qks, emb, i)
    assert (row.input, row.position, row.role) == (1, 3, "query")
    np.testing.assert_array_equal(row.full, qks.probs[1][2, 3])
    col = qe.attention_row(qks, emb, t + i)
    assert col.role == "key"
    np.testing.assert_array_equal(col.full, qks.probs[1][2, :, 3])
    assert row.tokens == qks.tokens[5:12] and row.changed is None


def test_token_kinds_and_contexts():
    kinds = [qe.token_kind(t, s) for t, s in
             [("[CLS]", True), ("cat", False), (" cat", False), ("##s", False), (",", False), (" ", False),
              ("42", False), (" 3.5", False)]]
    assert kinds == ["special", "word", "word", "word", "punctuation", "punctuation", "number", "number"]
    assert qe.token_kind("CLS", True, "vit") == "CLS" and qe.token_kind("(0,1)", False, "vit") == "patch"
    wordpiece = qe.contexts(["[CLS]", "play", "##ing", "cats", "[SEP]"])
    assert wordpiece[2] == "[CLS] play«ing» cats [SEP]"
    bytelevel = qe.contexts(["The", " cat", " sat", "."])
    assert bytelevel[1] == "The «cat» sat."
    assert qe.contexts(["CLS", "(0,0)"], "digit 3")[1] == "digit 3 · (0,0)"
    long = qe.contexts([f" w{i}" for i in range(100)], width=10)[50]
    assert long.startswith("…") and long.endswith("…") and "«w50»" in long


def test_corpus_ships_enough_sentences():
    lines = qe.load_corpus()
    assert len(lines) >= 200 and len(set(lines)) == len(lines)
    assert qe.load_corpus(limit=5) == lines[:5]
    assert qe.inputs_hash(lines[:3]) != qe.inputs_hash(lines[:4])


# -- the real presets, offline, 10 inputs each ---------------------------------------------------------
def inputs_for(lm):
    if lm.kind == "vit":
        return qe.digit_inputs(10)
    return qe.load_corpus(limit=10), None


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["minilm", "smollm2-135m", "digits-vit"])
def test_real_presets(preset, request):
    from models.tracer import trace

    lm = request.getfixturevalue({"minilm": "minilm", "smollm2-135m": "smollm", "digits-vit": "digits_vit"}[preset])
    inputs, names = inputs_for(lm)
    layer = 1
    seen = []
    qks = qe.collect(lm, inputs, layer, names=names, progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and len(seen) == len(inputs)
    tr = trace(lm, **qe._arg(inputs[3]), qk=True)  # the one-layer recorder sees what a full trace records
    lo, hi = qks.offsets[3], qks.offsets[4]
    np.testing.assert_array_equal(qks.q[:, lo:hi], tr.arrays[f"L{layer}_q"])
    np.testing.assert_array_equal(qks.k[:, lo:hi], tr.arrays[f"L{layer}_k"])
    np.testing.assert_array_equal(qks.probs[3], tr.attention(layer))
    assert qks.tokens[lo:hi] == tr.tokens and qks.q.shape[:2] == (lm.n_heads, qks.n_tokens)
    kinds = set(qks.token_kind)
    assert kinds <= ({"CLS", "patch"} if lm.kind == "vit" else {"special", "word", "punctuation", "number"})
    emb = qe.embed(qks, 2, "pca", 2)
    assert emb.coords.shape == (2 * qks.n_tokens, 2)
    # softmax rows are unchanged by the normalisation on real q and k too
    q, k = qks.q[2, lo:hi], qks.k[2, lo:hi]
    n = qe.normalise(qks.q[2], qks.k[2])
    before = softmax_rows(q @ k.T)
    after = softmax_rows(n.q[lo:hi] @ n.k[lo:hi].T)
    np.testing.assert_allclose(after, before, atol=1e-6)
    row = qe.attention_row(qks, emb, lo + 4, lm=lm, variant="sliding_window:w=1")
    assert row.full.sum() == pytest.approx(1.0, abs=1e-5)
    assert row.changed is not None and row.changed.shape == row.full.shape
    assert not np.allclose(row.changed_map, row.full_map)
