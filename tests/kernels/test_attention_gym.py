"""The catalogue's entries from attention-gym — prefix_lm, document, alibi, softcap — against
brute-force loops over (i, j), through the attention path, FlexAttention and their snippets."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from kernels.context import TokenContext
from kernels.flex import dense_mask, flex_attention
from kernels.native import NativeAttention
from kernels.reference import allowed_fn, attention
from kernels.variants import REGISTRY, VariantError, parse_variant

SCALE = 0.4


def qkv(ctx, B=1, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, ctx.n_heads, ctx.n, D, generator=g) * 2 for _ in range(3))


def brute_attention(q, k, v, keep, bias=None, transform=None):
    """float64 loops: per row, softmax over the kept keys of transform(s) + bias."""
    B, H, N, _ = q.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    probs = torch.zeros(B, H, N, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                js = [j for j in range(N) if keep(h, i, j)]
                if not js:
                    continue
                s = torch.tensor([float(q[b, h, i].double() @ k[b, h, j].double()) * SCALE for j in js],
                                 dtype=torch.float64)
                if transform is not None:
                    s = transform(s)
                if bias is not None:
                    s = s + torch.tensor([bias(h, i, j) for j in js], dtype=torch.float64)
                p = torch.softmax(s, 0)
                probs[b, h, i, js] = p
                out[b, h, i] = p @ v[b, h, js].double()
    return out, probs


def check(variant, ctx, keep, bias=None, transform=None, model_mask=None):
    q, k, v = qkv(ctx)
    res = attention(q, k, v, scale=SCALE, ctx=ctx, variant=variant, model_mask=model_mask, want_probs=True, chunk=5)
    out, probs = brute_attention(q, k, v, keep, bias, transform)
    torch.testing.assert_close(res.probs.double(), probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.out.double(), out, atol=1e-5, rtol=1e-5)
    return res


# ------------------------------------------------------------------ prefix_lm


@pytest.mark.parametrize("n", [0, 1, 6, 30])
def test_prefix_lm(n):
    ctx = TokenContext.sequence(17, causal=True, n_heads=2)
    check(parse_variant(f"prefix_lm:n={n}"), ctx, lambda h, i, j: j < n or j <= i)


def test_prefix_lm_keeps_padding_hidden():
    """It widens causality only: the prefix rows still never see a padding key."""

    class Padding:
        def rows(self, q0, q1):
            keep = torch.ones(1, 1, q1 - q0, 17, dtype=torch.bool)
            keep[..., 3] = False  # key 3 is padding
            return keep & (torch.arange(17)[None, :] <= torch.arange(q0, q1)[:, None])

    ctx = TokenContext.sequence(17, causal=True, n_heads=2)
    check(parse_variant("prefix_lm:n=6"), ctx, lambda h, i, j: j != 3 and (j < 6 or j <= i), model_mask=Padding())


def test_only_prefix_lm_widens_the_model_mask():
    """Every other variant's keep set lies inside the model's causal mask; prefix_lm says it does not."""
    ctx = TokenContext.sequence(12, causal=True, n_heads=2, n_layers=1)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert parse_variant("prefix_lm").widens_mask
    for name, cls in REGISTRY.items():
        variant = parse_variant("document:lengths=4" if name == "document" else name)
        try:
            variant.check(ctx)
            keep = allowed_fn(variant, ctx, None, 1, 2, 12, "cpu")(0, 12)
        except VariantError:  # calibrated variants need a model
            continue
        widened = bool((keep.expand(1, 2, 12, 12) & ~causal).any())
        assert widened == (name == "prefix_lm"), name
        assert bool(cls.widens_mask) == (name == "prefix_lm"), name


def test_prefix_lm_cannot_be_restricted_to_heads():
    from kernels.variants.subset import restrict_heads

    with pytest.raises(VariantError, match="cannot be restricted to some heads"):
        restrict_heads(parse_variant("prefix_lm"), [0])


# ------------------------------------------------------------------ document


def doc_of(lengths, n):
    ends = [sum(lengths[: i + 1]) for i in range(len(lengths))]
    return [sum(e <= t for e in ends) for t in range(n)]


@pytest.mark.parametrize("causal", [True, False])
def test_document_by_lengths(causal):
    ctx = TokenContext.sequence(19, causal=causal, n_heads=2)
    doc = doc_of([5, 7, 3], 19)  # 4 documents: the last 4 tokens are the rest
    check(parse_variant("document:lengths=5;7;3"), ctx, lambda h, i, j: doc[i] == doc[j] and (not causal or j <= i))


def test_document_by_separator_token():
    ids = torch.tensor([5, 9, 2, 7, 7, 2, 8, 3, 9, 2, 4, 4, 6])
    ctx = TokenContext.sequence(13, causal=True, n_heads=2, token_ids=ids, separators=(2,))
    doc = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]  # a separator ends the document it is in
    check(parse_variant("document"), ctx, lambda h, i, j: doc[i] == doc[j] and j <= i)
    doc9 = [0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]  # sep=9 given explicitly
    check(parse_variant("document:sep=9"), ctx, lambda h, i, j: doc9[i] == doc9[j] and j <= i)


def test_document_with_an_inner_variant():
    ctx = TokenContext.sequence(19, causal=True, n_heads=2)
    doc = doc_of([8, 6], 19)
    check(parse_variant("document:lengths=8;6,inner=[sliding_window:w=2,sinks=1]"), ctx,
          lambda h, i, j: doc[i] == doc[j] and j <= i and (abs(i - j) <= 2 or j < 1))
    slopes = [2.0 ** (-8 * (h + 1) / 2) for h in range(2)]
    check(parse_variant("document:lengths=8;6,inner=alibi"), ctx, lambda h, i, j: doc[i] == doc[j] and j <= i,
          bias=lambda h, i, j: -slopes[h] * abs(i - j))


def test_document_on_a_vit_keeps_special_tokens_global():
    ctx = TokenContext.vit((3, 4), n_prefix=1, n_heads=2)
    doc = doc_of([7], 13)
    check(parse_variant("document:lengths=7"), ctx, lambda h, i, j: i == 0 or j == 0 or doc[i] == doc[j])


def test_document_refusals():
    ctx = TokenContext.sequence(8, causal=True)
    with pytest.raises(VariantError, match="give the documents' lengths"):
        parse_variant("document").check(ctx)
    with pytest.raises(VariantError, match="inner cannot be document"):
        parse_variant("document:inner=document")
    with pytest.raises(VariantError, match="lengths"):
        parse_variant("document:lengths=a;b")
    assert parse_variant(parse_variant("document:lengths=3,inner=[topk:k=2]").spec()).inner.spec() == "topk:k=2"


# ------------------------------------------------------------------ alibi, softcap


@pytest.mark.parametrize("causal", [True, False])
def test_alibi(causal):
    ctx = TokenContext.sequence(15, causal=causal, n_heads=4)
    slopes = [2.0 ** (-8 * (h + 1) / 4) for h in range(4)]
    check(parse_variant("alibi"), ctx, lambda h, i, j: not causal or j <= i,
          bias=lambda h, i, j: -slopes[h] * abs(i - j))


def test_alibi_on_a_vit_leaves_special_tokens_unbiased():
    ctx = TokenContext.vit((3, 3), n_prefix=1, n_heads=2)
    slopes = [2.0 ** (-8 * (h + 1) / 2) for h in range(2)]
    check(parse_variant("alibi"), ctx, lambda h, i, j: True,
          bias=lambda h, i, j: 0.0 if i == 0 or j == 0 else -slopes[h] * abs(i - j))


@pytest.mark.parametrize("c", [0.5, 3.0, 50.0])
def test_softcap(c):
    ctx = TokenContext.sequence(14, causal=True, n_heads=2)
    check(parse_variant(f"softcap:c={c}"), ctx, lambda h, i, j: j <= i, transform=lambda s: c * torch.tanh(s / c))


def test_softcap_comes_after_the_models_own_cap():
    ctx = TokenContext.sequence(10, causal=False, n_heads=2)
    q, k, v = qkv(ctx)
    res = attention(q, k, v, scale=SCALE, ctx=ctx, variant=parse_variant("softcap:c=1"),
                    native=NativeAttention(softcap=4.0), want_probs=True)
    s = (q.double() @ k.double().transpose(-1, -2)) * SCALE
    expected = torch.softmax(1.0 * torch.tanh(4.0 * torch.tanh(s / 4.0) / 1.0), -1)
    torch.testing.assert_close(res.probs.double(), expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ FlexAttention and snippets

FLEX = [("prefix_lm:n=5", "causal"), ("document:lengths=5;6", "causal"), ("document:lengths=4", "bidirectional"),
        ("document:lengths=6,inner=[sliding_window:w=2,sinks=1]", "causal"), ("alibi", "causal"), ("alibi", "vit"),
        ("softcap:c=2", "causal"), ("softcap:c=2", "vit"), ("document:lengths=6,inner=softcap:c=1", "causal")]


def ctx_of(kind):
    return TokenContext.vit((3, 4), n_prefix=1, n_heads=2) if kind == "vit" else \
        TokenContext.sequence(16, causal=kind == "causal", n_heads=2)


@pytest.mark.parametrize("spec,kind", FLEX)
def test_flex_attention_and_snippet_mean_the_same(spec, kind):
    ctx, variant = ctx_of(kind), parse_variant(spec)
    q, k, v = qkv(ctx, B=2)
    ref = attention(q, k, v, scale=SCALE, ctx=ctx, variant=variant)
    got = flex_attention(q, k, v, variant, ctx, SCALE, block_size=16)
    torch.testing.assert_close(got.out, ref.out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.lse, ref.lse, atol=1e-5, rtol=1e-5)
    sizes = {"grid": ctx.grid, "n_prefix": 1} if kind == "vit" else {"n": ctx.n}
    ns: dict = {"__name__": "snippet"}
    exec(compile(variant.flex_snippet(kind, n_heads=2, **sizes), "<snippet>", "exec"), ns)
    if "mask_mod" in ns:
        assert torch.equal(create_mask(ns["mask_mod"], 1, 1, ctx.n, ctx.n, device="cpu")[0], dense_mask(variant, ctx))
    score_mod = variant.score_mod(ctx)
    if score_mod is not None:
        qi, kj = torch.arange(ctx.n)[:, None], torch.arange(ctx.n)[None, :]
        for h in range(2):
            s = torch.randn(ctx.n, ctx.n)
            got_s = torch.stack([torch.stack([ns["score_mod"](s[i, j], torch.tensor(0), torch.tensor(h),
                                                              torch.tensor(i), torch.tensor(j))
                                              for j in range(ctx.n)]) for i in range(ctx.n)])
            want = score_mod(s[None, None], torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.full((1, 1, 1, 1), h),
                             qi[None, None], kj[None, None])[0, 0]
            torch.testing.assert_close(got_s, want, atol=1e-5, rtol=1e-5)
    else:
        assert "score_mod" not in ns


def test_snippets_say_what_they_are():
    assert "widens it on purpose" in parse_variant("prefix_lm").flex_snippet()
    assert "keep & (kv_idx <= q_idx)" not in parse_variant("prefix_lm").flex_snippet()
    code = parse_variant("document").flex_snippet()
    assert "TOKEN_IDS" in code and "EOS_ID" in code
    assert "softcap(score, 7.0)" in parse_variant("softcap:c=7").flex_snippet()
