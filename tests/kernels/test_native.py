"""The model's own attention (kernels/native.py) on every attention path, against a float64 brute force.

Order of operations as native.py says: s = q·kᵀ·scale, soft cap, + key bias, + pair bias, the
variant's score_mod, the model's mask AND the variant's mask, then one softmax whose normaliser
also holds exp(sink logit): rows sum to 1 − exp(sink − lse), the mass recorded as `learned_sink`.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.context import TokenContext
from kernels.core import index_grid
from kernels.dispatch import attend
from kernels.flex import flex_attention
from kernels.maps import MapsSink, exact_tile
from kernels.native import NativeAttention
from kernels.reference import allowed_fn, attention
from kernels.variants import VariantError, parse_variant

H, KV, N, D, SCALE = 4, 2, 23, 8, 0.45


def natives(B=2, n=N, seed=3) -> dict[str, NativeAttention]:
    g = torch.Generator().manual_seed(seed)
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])
    key_bias = (slopes[:, None] * torch.arange(n)[None, :].float())[None]  # ALiBi as BLOOM adds it: (1, H, Nk)
    pair_bias = torch.randn(B, H, n, n, generator=g)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    return {
        "softcap": NativeAttention(softcap=1.5),
        "key_bias": NativeAttention(key_bias=key_bias),
        "pair_bias": NativeAttention(pair_bias=pair_bias),
        "sinks": NativeAttention(sink_logits=sinks),
        "all": NativeAttention(softcap=2.0, key_bias=key_bias, pair_bias=pair_bias, sink_logits=sinks),
    }


def gqa_qkv(B=2, n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, n, D, generator=g) * 2  # large enough for the soft cap to bite
    k, v = (torch.randn(B, KV, n, D, generator=g).repeat_interleave(H // KV, dim=1) for _ in range(2))
    return q, k, v


class Padding:
    """A model mask hiding padding keys; batch item 1 has every key hidden from its rows 0..2."""

    def __init__(self, n):
        self.keep = torch.ones(2, 1, n, n, dtype=torch.bool)
        self.keep[1, :, :, n - 4:] = False  # padding keys
        self.keep[1, :, :3] = False  # rows that see nothing

    def rows(self, q0, q1):
        return self.keep[:, :, q0:q1]


def brute(q, k, v, ctx, variant, native: NativeAttention, model_mask=None, top_k=None):
    """out, probs, lse, learned-sink mass in float64, by the definition."""
    B, H_, n, _ = q.shape
    s = q.double() @ k.double().transpose(-1, -2) * SCALE
    if native.softcap is not None:
        s = native.softcap * torch.tanh(s / native.softcap)
    if native.key_bias is not None:
        s = s + native.key_bias.double()[:, :, None, :]
    if native.pair_bias is not None:
        s = s + native.pair_bias.double()
    score_mod = variant.score_mod(ctx)
    if score_mod is not None:
        s = score_mod(s, *index_grid(B, H_, 0, n, n, "cpu"))
    keep = allowed_fn(variant, ctx, model_mask, B, H_, n, "cpu")(0, n)
    keep = torch.ones(B, H_, n, n, dtype=torch.bool) if keep is None else keep.expand(B, H_, n, n)
    if top_k is not None:  # topk's rule, on the modified scores
        ranked = s.masked_fill(~keep, -math.inf).sort(dim=-1, descending=True, stable=True).indices[..., :top_k]
        keep = keep & torch.zeros_like(keep).scatter_(-1, ranked, True)
    s = s.masked_fill(~keep, -math.inf)
    total = s
    if native.sink_logits is not None:
        total = torch.cat([s, native.sink_logits.double()[None, :, None, None].expand(B, H_, n, 1)], dim=-1)
    lse = torch.logsumexp(total, -1)
    p = torch.where(torch.isneginf(lse)[..., None], 0.0, torch.exp(s - lse[..., None]))
    mass = 1 - p.sum(-1)
    return p @ v.double(), p, lse, mass


VARIANTS = ["full", "sliding_window:w=4,sinks=1", "decay_1d", "topk:k=5"]


@pytest.mark.parametrize("which", ["softcap", "key_bias", "pair_bias", "sinks", "all"])
@pytest.mark.parametrize("spec", VARIANTS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_native_on_the_softmax_path(which, spec, causal):
    ctx = TokenContext.sequence(N, causal=causal, n_heads=H)
    variant, native = parse_variant(spec), natives()[which]
    q, k, v = gqa_qkv()
    mask = Padding(N)
    maps = MapsSink(2, H, N, N, ctx, pooled=5, device="cpu")
    res = attend(q, k, v, scale=SCALE, ctx=ctx, variant=variant, model_mask=mask, native=native, want_probs=True,
                 sinks=(maps,))
    out, p, lse, mass = brute(q, k, v, ctx, variant, native, mask, top_k=5 if spec.startswith("topk") else None)
    torch.testing.assert_close(res.out.double(), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.probs.double(), p, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.lse.double(), lse, atol=1e-5, rtol=1e-5)
    assert not torch.isnan(res.out).any()
    empty = torch.zeros_like(res.empty)
    empty[1, :, :3] = True  # rows that see no key: zero output, flagged, the sink (if any) took everything
    assert torch.equal(res.empty, empty)
    if native.sink_logits is not None:
        torch.testing.assert_close(maps.stats["learned_sink"].double(), mass, atol=1e-5, rtol=1e-5)
    else:
        assert "learned_sink" not in maps.stats
    dist = (torch.arange(N)[:, None] - torch.arange(N)[None, :]).abs().double()
    expected = {"entropy": torch.special.entr(p).sum(-1), "distance": (p * dist).sum(-1), "sink": p[..., 0],
                "maxp": p.amax(-1)}
    for name, value in expected.items():
        torch.testing.assert_close(maps.stats[name].double(), value, atol=5e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("which", ["softcap", "key_bias", "sinks", "all"])
def test_output_only_falls_back_exactly(which):
    """Output only: SDPA cannot take the model's own modifiers, so the exact path runs."""
    ctx = TokenContext.sequence(N, causal=True, n_heads=H)
    q, k, v = gqa_qkv()
    native = natives()[which]
    for spec in ("full", "sliding_window:w=4,sinks=1"):
        variant = parse_variant(spec)
        res = attend(q, k, v, scale=SCALE, ctx=ctx, variant=variant, native=native, want_lse=False)
        torch.testing.assert_close(res.out.double(), brute(q, k, v, ctx, variant, native)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["softcap", "key_bias", "sinks", "all"])
def test_exact_tiles_with_native(which):
    ctx = TokenContext.sequence(N, causal=True, n_heads=H)
    q, k, v = gqa_qkv(B=1)
    native = natives(B=1)[which]
    variant = parse_variant("decay_1d")
    res = attention(q, k, v, scale=SCALE, ctx=ctx, variant=variant, native=native, want_probs=True)
    tile = exact_tile(q[0], k[0], res.lse[0], (4, 17), (2, 11), scale=SCALE, ctx=ctx, variant=variant, native=native)
    torch.testing.assert_close(tile, res.probs[0, :, 4:17, 2:11], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("which", ["softcap", "key_bias", "pair_bias", "sinks", "all"])
def test_flex_attention_with_native(which):
    ctx = TokenContext.sequence(N, causal=True, n_heads=H)
    q, k, v = gqa_qkv()
    native = natives()[which]
    variant = parse_variant("sliding_window:w=4,sinks=1")
    res = flex_attention(q, k, v, variant, ctx, SCALE, native=native, compile=False)
    out, _, lse, _ = brute(q, k, v, ctx, variant, native)
    torch.testing.assert_close(res.out.double(), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.lse.double(), lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["entmax:alpha=1", "relaxed:gamma=0.2", "entmax:alpha=2", "block_topk:b=4,blocks=2",
                                  "routing_2d:S=2,k=2", "polyline_path"])
def test_content_variants_put_the_sink_in_the_normaliser(spec):
    """A learned sink takes its share however the row is normalised; entmax with α = 1 is the softmax."""
    ctx = TokenContext.vit((4, 5), n_prefix=1, n_heads=H) if spec.startswith("polyline") else \
        TokenContext.sequence(N, causal=True, n_heads=H)
    q, k, v = gqa_qkv(n=ctx.n)
    native = NativeAttention(sink_logits=torch.tensor([3.0, -2.0, 0.5, 1.0]))
    maps = MapsSink(2, H, ctx.n, ctx.n, ctx, pooled=None, device="cpu")
    res = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant(spec), native=native, want_probs=True,
                    sinks=(maps,))
    plain = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant(spec), want_probs=True)
    total = res.probs.sum(-1)
    assert (total <= plain.probs.sum(-1) + 1e-6).all() and (total < plain.probs.sum(-1) - 1e-2).any()
    torch.testing.assert_close(maps.stats["learned_sink"], 1 - total, atol=1e-5, rtol=1e-5)
    if spec == "entmax:alpha=1":
        softmax = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("full"), native=native,
                            want_probs=True)
        torch.testing.assert_close(res.probs, softmax.probs, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(res.out, softmax.out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["linear_efficient", "focused_linear", "linformer"])
@pytest.mark.parametrize("which", ["softcap", "key_bias", "sinks"])
def test_approximations_refuse_in_one_line(spec, which):
    ctx = TokenContext.sequence(N, causal=False, n_heads=H)
    q, k, v = gqa_qkv()
    with pytest.raises(VariantError, match=f"{spec.partition(':')[0]} cannot honour this model's own") as err:
        attend(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant(spec), native=natives()[which])
    assert "\n" not in str(err.value)
    assert {"softcap": "soft-capping", "key_bias": "ALiBi", "sinks": "learned sinks"}[which] in str(err.value)


def test_approximations_never_widen_the_model_mask():
    """A model's own sliding window is not key × row structure: an O(N) approximation refuses it."""

    class Window:
        def rows(self, q0, q1):
            return ((torch.arange(q0, q1)[:, None] - torch.arange(N)[None, :]).abs() <= 3)[None, None]

    ctx = TokenContext.sequence(N, causal=False, n_heads=H)
    q, k, v = gqa_qkv()
    with pytest.raises(VariantError, match="cannot honour this model's own mask"):
        attend(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("linear_efficient"), model_mask=Window())
    res = attend(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("linear_efficient"), model_mask=Padding(N))
    assert not res.out[1, :, :3].any()  # padding alone is honoured


def test_delta_correction_and_head_ablation_honour_native():
    ctx = TokenContext.sequence(N, causal=True, n_heads=H, n_layers=1)
    q, k, v = gqa_qkv()
    native = natives()["all"]
    full = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("full"), native=native, want_probs=True)
    ablated = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("head_ablation:heads=0.1"),
                        native=native, want_probs=True)
    keep = torch.tensor([True, False, True, True])
    torch.testing.assert_close(ablated.out[:, keep], full.out[:, keep])
    assert not ablated.out[:, 1].any()
    delta = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("delta_correction:inner=full,every=4"),
                      native=native, want_probs=True)
    torch.testing.assert_close(delta.out, full.out, atol=1e-5, rtol=1e-5)  # full corrected by full: unchanged
    torch.testing.assert_close(delta.probs, full.probs, atol=1e-6, rtol=1e-5)
