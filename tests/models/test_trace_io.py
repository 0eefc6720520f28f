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


# -- nothing overwritten, nothing half-written (issue 15, item 3) -------------------------------------------
def test_save_never_overwrites_without_force(tmp_path, text_trace):
    folder = text_trace.save(tmp_path / "t")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(TraceError, match=r"already exists; pass --force"):
        text_trace.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (tmp_path / "file").write_text("not a trace")
    with pytest.raises(TraceError, match="already exists"):
        text_trace.save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "not a trace"


def test_force_replaces_a_trace_folder_only(tmp_path, text_trace):
    folder = text_trace.save(tmp_path / "t")
    text_trace.save(folder, force=True)
    assert Trace.load(folder).tokens == text_trace.tokens
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TraceError, match="not a trace folder; refusing to replace it, even with --force"):
        text_trace.save(other, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraceError, match="is not a trace folder"):
        text_trace.save(tmp_path / "file", force=True)
    assert (other / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "home", "t"]  # no temporaries left


def test_a_failed_save_leaves_nothing(tmp_path, text_trace, monkeypatch):
    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    with pytest.raises(OSError, match="No space"):
        text_trace.save(tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


KILL_SECOND_RENAME = """
import os, signal, sys
import models.atomic as atomic
from models.trace import Trace
calls = []
real = os.rename
def rename(src, dst):
    calls.append(dst)
    if len(calls) == 2:  # the old folder is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
atomic.os.rename = rename
tr = Trace.load(sys.argv[1])
tr.variant_layers = [0]
tr.save(sys.argv[1], force=True)
"""


def test_killed_while_replacing_the_old_trace_comes_back(tmp_path, text_trace):
    """A --force save killed between its two renames: the next start puts the old trace back."""
    import os
    import subprocess
    import sys

    folder = text_trace.save(tmp_path / "t")
    before = (folder / "manifest.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_SECOND_RENAME, str(folder)], env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not folder.exists()  # aside, under a hidden name
    assert any(p.name.startswith(".t.attnscope-old-") for p in tmp_path.iterdir())
    back = Trace.load(folder)  # the next start: loading it, or writing beside it
    assert back.variant_layers is None and (folder / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # the half-written new one is gone too


# -- the manifest is checked like the arrays (item 6) -------------------------------------------------------
def _rewrite(folder, edit, rehash=True):
    """Edit manifest.json with `edit(meta)`; with rehash, recompute its hash as a careful forger would."""
    from models.trace import manifest_hash

    meta = json.loads((folder / "manifest.json").read_text())
    edit(meta)
    if rehash:
        meta["manifest_sha256"] = manifest_hash(meta)
    (folder / "manifest.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(tokens=m["tokens"][:-1] + ["x"]), "does not match its manifest_sha256"),
    (lambda m: m.update(n_layers=5), "does not match its manifest_sha256"),
    (lambda m: m.update(n_heads=1), "does not match its manifest_sha256"),
])
def test_edited_manifest_is_refused(tmp_path, text_trace, edit, needle):
    folder = text_trace.save(tmp_path / "t")
    _rewrite(folder, edit, rehash=False)
    with pytest.raises(TraceError, match=needle):
        Trace.load(folder)


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(n_layers=5, native=["global"] * 5),
     r"no attention map \(probs or pooled\) for layers \[2, 3, 4\]"),
    (lambda m: m.update(n_layers=1, native=["global"]), "is for layer 1; the manifest says 1 layers"),
    (lambda m: m.update(n_layers=5), r"native must have one entry per layer \(5\)"),
    (lambda m: m.update(n_heads=1), "expected"),
    (lambda m: m.update(tokens=m["tokens"][:-1]), "one entry per token"),
    (lambda m: m.update(tokens=None), "'tokens' is not"),
    (lambda m: m.update(n_layers="2"), "'n_layers' is not int"),
    (lambda m: m.pop("model_id"), "has no 'model_id'"),
    (lambda m: m.update(kind="rnn"), "kind must be one of"),
    (lambda m: m.update(variant="no_such_variant"), "variant: unknown variant"),
    (lambda m: m.update(variant_layers=[7]), "variant_layers must lie in 0..1"),
    (lambda m: m.update(grid=[2, 2]), "grid"),
    (lambda m: m.update(input=[]), "'input' is not dict"),
    (lambda m: m.update(format_version=1), "format_version 1"),
    (lambda m: m.update(shapes={}), "shapes"),
])
def test_consistent_looking_but_wrong_manifest_is_refused(tmp_path, text_trace, edit, needle):
    folder = text_trace.save(tmp_path / "t")
    _rewrite(folder, edit)
    with pytest.raises(TraceError, match=needle):
        Trace.load(folder)


def test_manifest_that_is_not_an_object_is_refused(tmp_path, text_trace):
    folder = text_trace.save(tmp_path / "t")
    for text, needle in (("[1, 2]", "not a trace manifest"), ("{", "cannot read"), ("[" * 100000, "cannot read")):
        (folder / "manifest.json").write_text(text)
        with pytest.raises(TraceError, match=needle):
            Trace.load(folder)


def test_array_of_the_wrong_shape_with_recomputed_hashes_is_refused(tmp_path, text_trace):
    from models.trace import arrays_hash

    folder = text_trace.save(tmp_path / "t")
    arrays = dict(np.load(folder / "trace.npz"))
    arrays["L1_probs"] = arrays["L1_probs"][:, :3, :3].copy()
    np.savez(folder / "trace.npz", **arrays)
    _rewrite(folder, lambda m: m.update(arrays_sha256=arrays_hash(arrays),
                                        shapes={k: list(v.shape) for k, v in arrays.items()}))
    with pytest.raises(TraceError, match=r"L1_probs has shape \(4, 3, 3\), expected \(H, N, N\)"):
        Trace.load(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not numbers"])
def test_damaged_arrays_are_one_error(tmp_path, text_trace, damage):
    folder = text_trace.save(tmp_path / "t")
    npz = folder / "trace.npz"
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif damage == "garbage":
        npz.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    elif damage == "empty":
        npz.write_bytes(b"")
    else:
        np.savez(npz, logits=np.array(["a", "b"]))
    with pytest.raises(TraceError, match="cannot read|do not match|not numbers"):
        Trace.load(folder)


def test_a_huge_declared_array_is_refused_before_it_is_read(tmp_path, text_trace, monkeypatch):
    """A header can declare any size: the memory budget is checked before numpy allocates it."""
    import zipfile

    folder = text_trace.save(tmp_path / "t")
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (1 << 40,)
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(folder / "trace.npz", "a") as z:
        z.writestr("huge.npy", buf.getvalue())
    monkeypatch.setenv("ATTNSCOPE_MEMORY_BUDGET_GB", "4")
    with pytest.raises(Exception, match=r"loading .*trace.npz needs about 4096.0 GB"):
        Trace.load(folder)


def test_manifest_accepts_a_per_layer_native_list(tmp_path, text_trace):
    """The families branch adds `native` (one string per layer): the schema takes it, and checks its length."""
    folder = text_trace.save(tmp_path / "t")
    _rewrite(folder, lambda m: m.update(native=["causal", "causal"]))
    Trace.load(folder)
    _rewrite(folder, lambda m: m.update(native=["causal"]))
    with pytest.raises(TraceError, match="native must have one entry per layer"):
        Trace.load(folder)
