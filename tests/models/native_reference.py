"""A float64 brute-force definition of one attention call under the native contract (kernels/native.py).

Used by the family zoo to check what the adapters extract per call (mask rows, softcap, ALiBi key
bias, relative position pair bias, learned sink logits) until the engine honours `native` itself.
"""

from __future__ import annotations

import torch

from kernels.native import NativeAttention
from kernels.reference import AttnOut


def native_attention(q, k, v, *, scale: float, keep: torch.Tensor | None, native: NativeAttention, causal: bool):
    """(out, probs, lse, masked scores) in float64, in the order of operations of kernels/native.py.

    keep: bool broadcastable to (B, H, N, Nk) or None; causal adds key j ≤ query i.
    """
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * scale
    if native.softcap is not None:
        s = native.softcap * torch.tanh(s / native.softcap)
    if native.key_bias is not None:
        s = s + native.key_bias.double()[:, :, None, :]
    if native.pair_bias is not None:
        s = s + native.pair_bias.double()
    n, nk = s.shape[-2:]
    if causal:
        tril = torch.ones(n, nk, dtype=torch.bool).tril()
        keep = tril if keep is None else keep & tril
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    if native.sink_logits is not None:
        sink = native.sink_logits.double().view(1, -1, 1, 1).expand(*s.shape[:-1], 1)
        lse = torch.logsumexp(torch.cat([s, sink], -1), -1)
    else:
        lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # a row with every key masked: zeros
    return p @ v, p, lse, s


def attend_with_reference(real_attend):
    """`kernels.dispatch.attend` for an engine that does not take `native` yet: plain calls go to the real
    engine, calls with a native modifier (only `full` in the zoo) to the brute-force definition above."""

    def attend(q, k, v, *, scale, ctx, variant, model_mask=None, native=None, want_probs=False, want_lse=True,
               sinks=()):
        if native is None or native.is_plain:
            return real_attend(q, k, v, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
                               want_probs=want_probs, want_lse=want_lse, sinks=sinks)
        assert variant.is_full, "the brute-force stand-in only defines `full`"
        n, nk = q.shape[2], k.shape[2]
        keep = None if model_mask is None else model_mask.rows(0, n)
        out, p, lse, s = native_attention(q, k, v, scale=scale, keep=keep, native=native,
                                          causal=ctx.causal and n == nk)
        for sink in sinks:
            sink(0, n, p.float(), s.float())
        return AttnOut(out=out.float(), lse=lse.float(), empty=torch.isneginf(lse), probs=p.float() if want_probs
                       else None)

    return attend
