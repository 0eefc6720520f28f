"""The reference attention path: what every variant computes, in plain PyTorch.

Chunked over queries, so memory is O(chunk × N) whatever N is. Probabilities of each chunk
are handed to `sinks` (dense storage, pooled maps, row statistics) and then dropped.
Shapes: q (B, H, N, D); k, v (B, H, Nk, D) with heads already expanded for GQA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.context import TokenContext
from kernels.variants.base import Variant

# (q0, q1, probs, scores): probs and masked scores (-inf where masked) of one query chunk, (B, H, c, Nk)
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


def allowed_fn(variant: Variant, ctx: TokenContext, model_mask, batch: int, heads: int, nk: int, device):
    """f(q0, q1) -> bool mask broadcastable to (B, H, q1-q0, Nk), or None when all keys are kept.

    Combines the model's own mask (causal, padding), the context's causality and the
    variant's static mask_mod.
    """
    mask_mod = variant.mask_mod(ctx)
    self_attn = ctx.n == nk

    def allowed(q0: int, q1: int):
        b, h, qi, kj = index_grid(batch, heads, q0, q1, nk, device)
        keep = None
        if model_mask is not None:
            keep = model_mask.rows(q0, q1)
        if ctx.causal and self_attn:
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
    allowed = allowed_fn(variant, ctx.to(q.device), model_mask, B, H, Nk, q.device)
    if variant.attend is not None:
        return variant.attend(q, k, v, scale=scale, ctx=ctx, allowed=allowed, want_probs=want_probs,
                              sinks=sinks, chunk=chunk)

    score_mod = variant.score_mod(ctx.to(q.device))
    # Static sparsity: a chunk only computes scores against the keys some row of it may see.
    # Content-dependent hooks need whole rows, so they never skip.
    may_skip = variant.row_mask is None and variant.row_probs is None
    kf, vf = k.float(), v.float()
    out = q.new_empty(B, H, N, v.shape[-1], dtype=torch.float32)
    lse = q.new_empty(B, H, N, dtype=torch.float32)
    empty = torch.zeros(B, H, N, dtype=torch.bool, device=q.device)
    probs = q.new_empty(B, H, N, Nk, dtype=torch.float32) if want_probs else None
    for q0 in range(0, N, chunk):
        q1 = min(N, q0 + chunk)
        keep = allowed(q0, q1)
        cols = _used_keys(keep, Nk) if may_skip else None
        kc, vc = (kf, vf) if cols is None else (kf[:, :, cols], vf[:, :, cols])
        if cols is not None:
            keep = keep[..., cols]
        s = torch.matmul(q[:, :, q0:q1].float(), kc.transpose(-1, -2)) * scale  # (B, H, c, Nk or |cols|)
        if score_mod is not None:
            b, h, qi, kj = index_grid(B, H, q0, q1, Nk, q.device)
            s = score_mod(s, b, h, qi, kj if cols is None else kj[..., cols])
        if variant.row_mask is not None:
            keep = variant.row_mask(s, keep, torch.arange(q0, q1, device=q.device), ctx)
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)  # (B, H, c)
        dead = torch.isneginf(row_lse)
        if variant.row_probs is not None:
            p = variant.row_probs(s, keep, torch.arange(q0, q1, device=q.device), ctx)
        else:
            p = torch.exp(s - row_lse.masked_fill(dead, 0.0)[..., None])
        p = p.masked_fill(dead[..., None], 0.0)
        out[:, :, q0:q1] = torch.matmul(p, vc)
        lse[:, :, q0:q1] = row_lse
        empty[:, :, q0:q1] = dead
        if cols is not None and (probs is not None or sinks):
            p, s = _widen(p, cols, Nk, 0.0), _widen(s, cols, Nk, float("-inf"))
        if probs is not None:
            probs[:, :, q0:q1] = p
        for sink in sinks:
            sink(q0, q1, p, s)
    return AttnOut(out=out, lse=lse, empty=empty, probs=probs)
