"""The trace folder format: save/load round trip, manifest contents, tamper detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny import TEXT, sample_image, tiny_text_model, tiny_vit, wrap_text, wrap_vit

from models.trace import Trace, TraceError
from models.tracer import trace


@pytest.fixture(scope="module")
def text_trace(tokenizer):
    return trace(wrap_text(tiny_text_model("llama-gqa"), tokenizer), text=TEXT, qk=True)


def test_round_trip(tmp_path, text_trace):
    text_trace.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    assert back.tokens == text_trace.tokens and back.token_ids == text_trace.token_ids
    assert back.arrays.keys() == text_trace.arrays.keys()
    for name, arr in text_trace.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], arr)
    assert back.manifest() == text_trace.manifest()


def test_manifest_fields(tmp_path, text_trace):
    text_trace.save(tmp_path / "t")
    man = json.loads((tmp_path / "t" / "manifest.json").read_text())
    for key in ("model_id", "revision", "variant", "input", "tokens", "token_ids", "grid", "shapes", "versions",
                "arrays_sha256"):
        assert key in man
    assert man["input"]["sha256"] and man["variant"] == "full"
    n, h = len(man["tokens"]), man["n_heads"]
    assert man["shapes"]["L0_probs"] == [h, n, n]
    assert man["shapes"]["L0_q"] == man["shapes"]["L0_k"] == [h, n, 16]  # GQA keys expanded to every query head
    assert man["shapes"]["L1_lse"] == [h, n]
    assert man["versions"]["torch"]


def test_vit_trace_keeps_grid_and_image(tmp_path):
    tr = trace(wrap_vit(tiny_vit()), image=sample_image(), image_name="noise.png")
    tr.save(tmp_path / "v")
    back = Trace.load(tmp_path / "v")
    assert back.grid == [4, 4] and back.image.shape == (32, 32, 3) and back.image.dtype == np.uint8
    assert back.input["name"] == "noise.png" and back.labels == [f"LABEL_{i}" for i in range(5)]


def test_edited_arrays_are_refused(tmp_path, text_trace):
    folder = text_trace.save(tmp_path / "t")
    arrays = dict(np.load(folder / "trace.npz"))
    arrays["L0_probs"][0, 0, 0] += 0.5
    np.savez(folder / "trace.npz", **arrays)
    with pytest.raises(TraceError, match="do not match the hash"):
        Trace.load(folder)


def test_missing_file_is_named(tmp_path, text_trace):
    folder = text_trace.save(tmp_path / "t")
    (folder / "trace.npz").unlink()
    with pytest.raises(TraceError, match="trace.npz is missing"):
        Trace.load(folder)


def test_lse_matches_probs(text_trace):
    """LSE recorded per row lets any tile be rebuilt exactly from q and k."""
    q, k, lse = (text_trace.arrays[f"L1_{x}"] for x in ("q", "k", "lse"))
    scale = q.shape[-1] ** -0.5
    s = np.einsum("hid,hjd->hij", q, k) * scale
    s = np.where(np.tril(np.ones_like(s[0], dtype=bool)), s, -np.inf)
    np.testing.assert_allclose(np.exp(s - lse[..., None]), text_trace.attention(1), atol=1e-5)
