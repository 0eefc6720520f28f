"""The GPU route on CPU tensors (Triton under the interpreter): the runtime self-check's fallback and the
measured Triton-or-FlexAttention table. `dispatch._on_gpu` is patched so CPU tensors take the GPU route."""

from __future__ import annotations

import warnings

import pytest
import torch

from kernels import dispatch, gpu_table, selfcheck
from kernels import flex as kflex
from kernels.context import TokenContext
from kernels.maps import MapsSink
from kernels.reference import attention
from kernels.triton import attention_fwd
from kernels.variants import parse_variant

N, H = 24, 2


@pytest.fixture(autouse=True)
def gpu_route(monkeypatch):
    monkeypatch.setattr(dispatch, "_on_gpu", lambda q: True)
    selfcheck.reset()
    yield
    selfcheck.reset()


def inputs(causal=True):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, N, 32, generator=g) for _ in range(3))
    return q, k, v, TokenContext.sequence(N, causal=causal, n_heads=H)


def counting(monkeypatch, module, name, perturb=0.0):
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kw):
        calls.append(1)
        res = real(*args, **kw)
        if perturb:
            res.out = res.out + perturb
        return res

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_selfcheck_mismatch_warns_once_and_falls_back_to_reference(monkeypatch):
    counting(monkeypatch, attention_fwd, "triton_attention", perturb=0.05)  # a kernel wrong on "this card"
    q, k, v, ctx = inputs()
    variant = parse_variant("sliding_window:w=4,sinks=1")
    ref = attention(q, k, v, scale=0.2, ctx=ctx, variant=variant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [dispatch.attend(q, k, v, scale=0.2, ctx=ctx, variant=variant) for _ in range(3)]
    lines = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(lines) == 1, lines
    assert "sliding_window" in lines[0] and "float32" in lines[0] and "head dim 32" in lines[0]
    assert "max error 0.05" in lines[0] and "\n" not in lines[0]
    for res in got:  # the reference path's own result, not the perturbed kernel's
        assert torch.equal(res.out, ref.out) and torch.equal(res.lse, ref.lse)


def test_selfcheck_passes_a_correct_kernel_silently(monkeypatch):
    calls = counting(monkeypatch, attention_fwd, "triton_attention")
    q, k, v, ctx = inputs(causal=False)
    variant = parse_variant("decay_1d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = dispatch.attend(q, k, v, scale=0.2, ctx=ctx, variant=variant)
        dispatch.attend(q, k, v, scale=0.2, ctx=ctx, variant=variant)
    assert len(calls) == 3  # one self-check, then each call on the kernel
    ref = attention(q, k, v, scale=0.2, ctx=ctx, variant=variant)
    torch.testing.assert_close(res.out, ref.out, atol=2e-5, rtol=1e-4)


def test_selfcheck_refuses_a_kernel_that_raises():
    def broken(*args):
        raise RuntimeError("PTX: unsupported\nsecond line")

    q, _, _, ctx = inputs()
    with pytest.warns(RuntimeWarning, match=r"failed on this device: RuntimeError: PTX: unsupported;"):
        assert not selfcheck.verified(parse_variant("full"), ctx, torch.float32, 32, "cpu", broken)
    assert not selfcheck.verified(parse_variant("full"), ctx, torch.float32, 32, "cpu", broken)  # cached, silent


@pytest.mark.parametrize("spec,causal,table,path", [
    ("sliding_window:w=4,sinks=1", True, {"static_mask": "flex"}, "flex"),
    ("decay_1d", False, {"static_mask": "flex", "score_mod": "triton"}, "triton"),
    ("alibi", True, {"score_mod": "flex"}, "flex"),
    ("full", True, {}, "triton"),  # no measurement: the fallback
])
def test_table_sends_a_family_to_its_measured_path(monkeypatch, spec, causal, table, path):
    families = {f: {"backend": b} for f, b in table.items()}
    monkeypatch.setattr(gpu_table, "_cards", lambda: {"cpu": {"families": families}})
    monkeypatch.setattr(selfcheck, "verified", lambda *a: True)
    tri = counting(monkeypatch, attention_fwd, "triton_attention")
    flx = counting(monkeypatch, kflex, "flex_attention")
    q, k, v, ctx = inputs(causal)
    variant = parse_variant(spec)
    sink, ref_sink = (MapsSink(1, H, N, N, ctx, pooled=8, device="cpu") for _ in range(2))
    res = dispatch.attend(q, k, v, scale=0.2, ctx=ctx, variant=variant, sinks=(sink,))
    assert (len(tri), len(flx)) == ((0, 1) if path == "flex" else (1, 0))
    ref = attention(q, k, v, scale=0.2, ctx=ctx, variant=variant, sinks=(ref_sink,))
    torch.testing.assert_close(res.out, ref.out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(res.lse, ref.lse, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(sink.pooled(), ref_sink.pooled(), atol=2e-5, rtol=1e-4)  # the maps pass either way


def test_table_lookup_and_fallback(monkeypatch):
    monkeypatch.setattr(gpu_table, "_cards", lambda: {"nvidia-h200": {"families": {"content": {"backend": "flex"},
                                                                                  "baseline": {"backend": "odd"}}}})
    assert gpu_table.card_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_table.backend("content", "NVIDIA H200") == "flex"
    assert gpu_table.backend("baseline", "NVIDIA H200") == gpu_table.FALLBACK == "triton"  # not a backend
    assert gpu_table.backend("content", "NVIDIA A100-SXM4-80GB") == "triton"  # a card never measured


def test_shipped_table_is_valid():
    gpu_table._cards.cache_clear()
    cards = gpu_table._cards()
    assert isinstance(cards, dict)
    for entry in cards.values():
        assert entry["source"] and all(f["backend"] in gpu_table.BACKENDS for f in entry["families"].values())
