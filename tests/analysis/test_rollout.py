"""Attention rollout against a brute-force product of the per-layer matrices."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import rollout as ro
from models.trace import Trace


def stochastic(rng, *shape):
    a = rng.random(shape) + 1e-3
    return a / a.sum(-1, keepdims=True)


def brute(layers, residual, reduce=np.mean):
    """Â_l = (1 − w)·reduce(A_l) + w·I, renormalised, multiplied as Â_{L−1} ⋯ Â_0, entry by entry."""
    n = layers[0].shape[-1]
    joint = np.eye(n)
    for probs in layers:
        a = reduce(probs, axis=0) * (1 - residual) + residual * np.eye(n)
        a = a / a.sum(1, keepdims=True)
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                out[i, j] = sum(a[i, m] * joint[m, j] for m in range(n))
        joint = out
    return joint


@pytest.mark.parametrize("residual", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("reduce", ["mean", "max", "min"])
def test_matches_brute_force_and_rows_sum_to_one(residual, reduce):
    rng = np.random.default_rng(int(residual * 10))
    layers = [stochastic(rng, 3, 5, 5) for _ in range(4)]
    got = ro.rollout(layers, residual=residual, reduce=reduce)
    np.testing.assert_allclose(got, brute(layers, residual, getattr(np, reduce)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    assert (got >= 0).all()
    np.testing.assert_allclose(ro.rollout(np.stack(layers), residual, reduce), got)  # one (L, H, N, N) array


def test_default_is_half_attention_half_identity():
    rng = np.random.default_rng(0)
    a = stochastic(rng, 2, 4, 4)
    np.testing.assert_allclose(ro.rollout([a]), 0.5 * a.mean(0) + 0.5 * np.eye(4))
    assert ro.RESIDUAL == 0.5


def test_identity_attention_gives_identity():
    eye = np.broadcast_to(np.eye(6), (4, 6, 6))
    for residual in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(ro.rollout([eye] * 3, residual=residual), np.eye(6))


def test_head_subset_callable_and_zero_rows():
    rng = np.random.default_rng(1)
    layers = [stochastic(rng, 4, 5, 5) for _ in range(2)]
    np.testing.assert_allclose(ro.rollout(layers, heads=[1, 3]), brute([p[[1, 3]] for p in layers], 0.5))
    np.testing.assert_allclose(ro.rollout(layers, reduce=lambda a: a[2]), brute([p[2:3] for p in layers], 0.5))
    dead = layers[0].copy()
    dead[:, 2] = 0.0  # a row with every key masked
    out = ro.rollout([dead], residual=0.5)
    np.testing.assert_allclose(out[2], np.eye(5)[2])  # only the residual remains
    assert np.isfinite(ro.rollout([dead], residual=0.0)).all()
    with pytest.raises(ValueError, match="residual"):
        ro.rollout(layers, residual=1.5)
    with pytest.raises(ValueError, match="reduction"):
        ro.rollout(layers, reduce="median")


def vit_trace(probs, grid=(2, 3), n_prefix=1):
    n = n_prefix + grid[0] * grid[1]
    return Trace(
        model_id="fake-vit", kind="vit", variant="full", tokens=["CLS"] * n_prefix + [f"p{i}" for i in range(n - 1)],
        token_ids=list(range(n)), special=[True] * n_prefix + [False] * (n - n_prefix), n_layers=len(probs),
        n_heads=probs[0].shape[0], input={"type": "image"},
        arrays={f"L{i}_probs": p.astype(np.float32) for i, p in enumerate(probs)}, grid=list(grid),
    )


def test_trace_rollout_cls_row_on_the_grid():
    rng = np.random.default_rng(2)
    probs = [stochastic(rng, 2, 7, 7) for _ in range(3)]
    tr = vit_trace(probs)
    joint = brute(probs, 0.5)
    np.testing.assert_allclose(ro.trace_rollout(tr), joint, atol=1e-6)
    cls = ro.grid_rollout(tr)
    assert cls.shape == (2, 3)
    np.testing.assert_allclose(cls, joint[0, 1:].reshape(2, 3), atol=1e-6)
    np.testing.assert_allclose(ro.grid_rollout(tr, query=4, layers=[0, 1]), brute(probs[:2], 0.5)[4, 1:].reshape(2, 3),
                               atol=1e-6)
    text = vit_trace(probs)
    text.grid, text.kind = None, "bidirectional"
    with pytest.raises(ValueError, match="not a vision model"):
        ro.grid_rollout(text)


def test_digits_vit_rollout(digits_vit):
    from app import examples
    from models.tracer import trace

    tr = trace(digits_vit, image=examples.load_image_example(examples.image_examples()[0]))
    joint = ro.trace_rollout(tr)
    np.testing.assert_allclose(joint.sum(1), 1.0, atol=1e-5)
    assert ro.grid_rollout(tr).shape == tuple(tr.grid)
