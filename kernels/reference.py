"""The reference attention path: what every variant computes, in plain PyTorch.

Chunked over queries, so memory is O(chunk × N) whatever N is. Probabilities of each chunk
are handed to `sinks` (dense storage, pooled maps, row statistics) and then dropped.
Shapes: q (B, H, N, D); k, v (B, H, Nk, D) with heads already expanded for GQA.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.context import TokenContext
from kernels.variants.base import Variant

# (q0, q1, probs, scores): probs and masked scores (-inf where masked) of one query chunk, (B, H, c, Nk).
# A sink with `accepts_prefix = True` may get only the first w ≤ Nk columns (the rest have zero probability).
ChunkSink = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class AttnOut:
    out: torch.Tensor  # (B, H, N, D) in float32
    lse: torch.Tensor | None  # (B, H, N) float32; -inf on empty rows; None when not asked
    empty: torch.Tensor  # (B, H, N) bool: every key masked; the row's output is zero
    probs: torch.Tensor | None = None  # (B, H, N, Nk) when asked


def index_grid(batch: int, heads: int, q0: int, q1: int, nk: int, device) -> tuple[torch.Tensor, ...]:
    """Broadcastable (b, h, q_idx, kv_idx) index tensors, FlexAttention's argument convention."""
    return (
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(heads, device=device)[None, :, None, None],
        torch.arange(q0, q1, device=device)[None, None, :, None],
        torch.arange(nk, device=device)[None, None, None, :],
    )


def allowed_fn(
    variant: Variant, ctx: TokenContext, model_mask, batch: int, heads: int, nk: int, device, *, causal: bool = True
):
    """f(q0, q1, hi=nk) -> bool mask broadcastable to (B, H, q1-q0, hi) over keys [0, hi), or None.

    Combines the model's own mask (padding...), the context's causality (unless causal=False)
    and the variant's static mask_mod. None means every key is kept.
    """
    mask_mod = variant.mask_mod(ctx)
    model_mask = (
        None if model_mask is None or getattr(model_mask, "redundant_for", lambda c: False)(ctx) else model_mask
    )
    causal = causal and ctx.causal and ctx.n == nk

    def allowed(q0: int, q1: int, hi: int | None = None):
        hi = nk if hi is None else hi
        keep = None
        if model_mask is not None:
            keep = model_mask.rows(q0, q1)
            keep = None if keep is None else keep[..., :hi]
        if causal or mask_mod is not None:
            b, h, qi, kj = index_grid(batch, heads, q0, q1, hi, device)
            if causal:
                keep = _and(keep, kj <= qi)
            if mask_mod is not None:
                keep = _and(keep, mask_mod(b, h, qi, kj))
        return keep

    return allowed


class AllowedRows:
    """An `allowed(q0, q1)` function seen as a model mask, to run the reference path under it."""

    def __init__(self, allowed):
        self.allowed = allowed

    def rows(self, q0: int, q1: int):
        return self.allowed(q0, q1)


SKIP_BELOW = 0.9  # gather a chunk's used keys when they are at most this fraction of all keys


def _used_keys(keep: torch.Tensor | None, nk: int) -> torch.Tensor | slice | None:
    """The keys any row of the chunk may see (a slice when contiguous, as for causal rows), or None."""
    if keep is None:
        return None
    used = keep.reshape(-1, keep.shape[-1]).any(0)
    idx = used.nonzero().squeeze(1)
    if len(idx) > SKIP_BELOW * nk:
        return None
    if len(idx) == 0:  # no row sees anything: one (masked) key keeps the shapes valid
        return slice(0, 1)
    if len(idx) and int(idx[-1]) - int(idx[0]) + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _widen(x: torch.Tensor, cols, nk: int, fill: float) -> torch.Tensor:
    """Put (..., |cols|) values back into (..., nk) columns."""
    wide = x.new_full(x.shape[:-1] + (nk,), fill)
    if isinstance(cols, slice):
        wide[..., cols] = x
        return wide
    return wide.index_copy_(-1, cols, x)


def _and(a, b):
    return b if a is None else a & b


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    ctx: TokenContext,
    variant: Variant,
    model_mask=None,
    want_probs: bool = False,
    sinks: tuple[ChunkSink, ...] = (),
    chunk: int = 256,
) -> AttnOut:
    B, H, N, _ = q.shape
    Nk = k.shape[2]
    dctx = ctx.to(q.device)
    if variant.attend is not None:
        allowed = allowed_fn(variant, dctx, model_mask, B, H, Nk, q.device)
        return variant.attend(
            q, k, v, scale=scale, ctx=ctx, allowed=allowed, want_probs=want_probs, sinks=sinks, chunk=chunk
        )

    # Causality is handled here, not in the mask: a chunk never looks at keys after its last
    # row, and only its diagonal block needs masking.
    causal = ctx.causal and N == Nk
    allowed = allowed_fn(variant, dctx, model_mask, B, H, Nk, q.device, causal=False)
    score_mod = variant.score_mod(dctx)
    # Static sparsity: a chunk only computes scores against the keys some row of it may see.
    # Content-dependent hooks need whole rows, so they never skip.
    may_skip = variant.row_mask is None and variant.row_probs is None
    qs, kf, vf = q.float() * scale, k.float(), v.float()
    out = q.new_empty(B, H, N, v.shape[-1], dtype=torch.float32)
    lse = q.new_empty(B, H, N, dtype=torch.float32)
    empty = torch.zeros(B, H, N, dtype=torch.bool, device=q.device)
    probs = q.new_zeros(B, H, N, Nk, dtype=torch.float32) if want_probs else None
    plan_key = _plan_key(variant, dctx, model_mask, B, N, Nk, chunk, q.device)
    for q0 in range(0, N, chunk):
        q1 = min(N, q0 + chunk)
        keep, cols = _chunk_keys(plan_key, q0, lambda q0=q0, q1=q1: _keys_of_chunk(allowed, q0, q1, Nk, causal,
                                                                                      may_skip, q.device))
        hi = cols.stop if isinstance(cols, slice) else Nk
        s = torch.matmul(qs[:, :, q0:q1], kf[:, :, cols].transpose(-1, -2))  # (B, H, c, |cols|)
        if score_mod is not None:
            b, h, qi, kj = index_grid(B, H, q0, q1, hi, q.device)
            s = score_mod(s, b, h, qi, kj[..., cols])
        if keep is None and causal:  # only the diagonal block has keys after some row
            s[..., q0:q1].masked_fill_(_causal_block(q0, q1, q1, q.device)[..., q0:q1].logical_not(), float("-inf"))
        if variant.row_mask is not None:
            keep = variant.row_mask(s, keep, torch.arange(q0, q1, device=q.device), ctx)
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        p, row_lse = _softmax_lse(s)  # (B, H, c, |cols|), (B, H, c)
        dead = torch.isneginf(row_lse)
        if variant.row_probs is not None:
            p = variant.row_probs(s, keep, torch.arange(q0, q1, device=q.device), ctx)
        if dead.any():
            p = p.masked_fill(dead[..., None], 0.0)
        out[:, :, q0:q1] = torch.matmul(p, vf[:, :, cols])
        lse[:, :, q0:q1] = row_lse
        empty[:, :, q0:q1] = dead
        if probs is not None:
            probs[:, :, q0:q1, cols] = p
        if sinks:
            prefix = isinstance(cols, slice) and cols.start == 0
            wide = None
            for sink in sinks:
                if prefix and getattr(sink, "accepts_prefix", False):
                    sink(q0, q1, p, s)  # columns past the prefix hold zero probability
                else:
                    if wide is None:
                        wide = _widen(p, cols, Nk, 0.0), _widen(s, cols, Nk, float("-inf"))
                    sink(q0, q1, *wide)
    return AttnOut(out=out, lse=lse, empty=empty, probs=probs)


def _keys_of_chunk(allowed, q0: int, q1: int, nk: int, causal: bool, may_skip: bool, device):
    """(keep mask over the chosen keys or None, the keys: a slice or an index tensor) for rows q0..q1."""
    hi = q1 if causal else nk
    keep = allowed(q0, q1, hi)
    if keep is not None and causal:
        keep = keep & _causal_block(q0, q1, hi, device)
    cols = _used_keys(keep, hi) if may_skip else None
    if cols is None:
        return keep, slice(0, hi)
    return (None if keep is None else keep[..., cols]), cols


# The static part of a chunk's mask is the same in every layer of one forward pass: it is worked
# out once and reused (30 layers of SmolLM2 evaluate a mask rule once, not 30 times).
_PLANS: OrderedDict = OrderedDict()


def _plan_key(variant, ctx, model_mask, batch, n, nk, chunk, device):
    if model_mask is not None and not getattr(model_mask, "redundant_for", lambda c: False)(ctx):
        return None  # padding and other input masks are not cached
    if variant.row_mask is not None or getattr(variant, "mask_depends_on_layer", False):
        return None
    ident = (variant, ctx.special)  # held, and compared by identity: a recycled id() never matches
    return ident, (id(variant), id(ctx.special), ctx.n, ctx.kind, ctx.grid, ctx.n_heads, batch, n, nk, chunk,
                   str(device))


def _chunk_keys(key, q0: int, compute):
    if key is None:
        return compute()
    ident, k = key
    held = _PLANS.get(k)
    if held is None or held[0][0] is not ident[0] or held[0][1] is not ident[1]:
        held = _PLANS[k] = (ident, {})
        while len(_PLANS) > 4:
            _PLANS.popitem(last=False)
    plan = held[1]
    if q0 not in plan:
        plan[q0] = compute()
    return plan[q0]


def _softmax_lse(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax and log-sum-exp in four passes over the scores; rows of -inf give zeros and -inf."""
    m = s.amax(-1, keepdim=True).nan_to_num(neginf=0.0)  # a dead row keeps max 0: exp(-inf) = 0
    e = torch.exp(s - m)
    z = e.sum(-1, keepdim=True)
    p = e.div_(z.clamp_min(torch.finfo(e.dtype).tiny))
    return p, (m + z.log()).squeeze(-1)


def _causal_block(q0: int, q1: int, hi: int, device) -> torch.Tensor:
    """(c, hi) bool: key j ≤ query i, for rows q0..q1 against keys [0, hi)."""
    return torch.arange(hi, device=device)[None, :] <= torch.arange(q0, q1, device=device)[:, None]
