"""The bottom of every attention path: the result type, the one softmax with log-sum-exp, the one
query-chunk loop and what it hands to sinks.

Nothing here knows a variant or a model. Shapes: q (B, H, N, D); k, v (B, H, Nk, D); a chunk is the
query rows q0..q1 against the `cols` keys its block plan kept (kernels/blocks.py), so a chunk's
tensors are (B, H, c, w) with c = q1 − q0 and w ≤ Nk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

NEG_INF = float("-inf")


@dataclass
class AttnOut:
    out: torch.Tensor  # (B, H, N, D) in float32
    lse: torch.Tensor | None  # (B, H, N) float32, learned sinks included; -inf on empty rows; None when not asked
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


def and_masks(a, b):
    """AND of two optional keep masks (None = keep every key)."""
    if a is None:
        return b
    return a if b is None else a & b


def chunk_ranges(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(q0, q1) of each query chunk, in order."""
    for q0 in range(0, n, chunk):
        yield q0, min(n, q0 + chunk)


def softmax_lse(s: torch.Tensor, sink: torch.Tensor | None = None):
    """Row softmax of masked scores (−inf = masked) over the last axis, and its log-sum-exp.

    One fused softmax pass (torch.softmax's vectorised exp) and two max reductions: lse = max s −
    log max p. sink: learned sink logits (1, H, 1, 1): a key with no value that joins the
    normaliser, so rows then sum to 1 − exp(sink − lse). A row with no finite score (and no sink)
    gives zeros and lse −inf, never NaN. Returns (p, lse, top), top the largest score of each row.
    """
    top = s.amax(-1)
    p = torch.softmax(s, -1)
    dead = torch.isneginf(top)
    if bool(dead.any()):  # softmax of a row of −inf is NaN; we promise zeros
        p = p.masked_fill(dead[..., None], 0.0)
    lse = torch.where(dead, NEG_INF, top - torch.log(p.amax(-1)))
    if sink is not None:
        total = torch.logaddexp(lse, sink[..., 0])
        p = p.mul_(torch.exp(lse - total)[..., None])
        lse = total
    return p, lse, top


def learned_sink_mass(lse: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """exp(sink − lse): the share of each row the learned sink absorbed. lse (B, H, c), sink (1, H, 1, 1)."""
    return torch.where(torch.isneginf(lse), 0.0, torch.exp(sink[..., 0] - lse))


@dataclass(eq=False)
class Chunk:
    """One query chunk of one attention call, as sinks receive it.

    p: (B, H, c, w) probabilities over the chunk's key columns `cols` (a slice or an ascending long
    index into the Nk keys); every key not in `cols` has probability 0. `scores` are the scores the
    probabilities came from, −inf where masked (for an approximation: the model's own masked
    scores), computed on first use when the path did not keep them. `stats`: row statistics
    (B, H, c) the path already computed in its own pass (see kernels.maps.STATS), or None.
    """

    q0: int
    q1: int
    nk: int
    cols: slice | torch.Tensor
    p: torch.Tensor
    lse: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] | None = None
    sink_mass: torch.Tensor | None = None  # (B, H, c): the share a learned sink absorbed, when the model has sinks
    scores_fn: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    _scores: torch.Tensor | None = field(default=None, repr=False)
    kept_fn: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def scores(self) -> torch.Tensor:
        if self._scores is None:
            self._scores = self.scores_fn()
        return self._scores

    @property
    def kept(self) -> torch.Tensor:
        """bool, broadcastable to (B, H, c, w): the scores no mask or rule removed (the finite ones)."""
        return self.kept_fn() if self.kept_fn is not None else torch.isfinite(self.scores)

    @property
    def kv_idx(self) -> torch.Tensor:
        """long (w,): the key of each column."""
        if isinstance(self.cols, slice):
            return torch.arange(self.cols.start, self.cols.stop, device=self.p.device)
        return self.cols

    def wide(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """(..., w) values over the chunk's columns put back into (..., Nk) columns; `fill` elsewhere."""
        if isinstance(self.cols, slice) and self.cols.start == 0 and self.cols.stop == self.nk:
            return x
        wide = x.new_full(x.shape[:-1] + (self.nk,), fill)
        wide[..., self.cols] = x
        return wide

    def weighted(self, weight: torch.Tensor) -> Chunk:
        """The same chunk with probabilities and statistics multiplied by a per-head weight (1, H, 1, 1)."""
        w = weight[..., 0]
        stats = None if self.stats is None else {k: v * w for k, v in self.stats.items()}
        sink_mass = None if self.sink_mass is None else self.sink_mass * w
        return replace(self, p=self.p * weight, stats=stats, sink_mass=sink_mass, scores_fn=lambda: self.scores,
                       _scores=None, kept_fn=lambda: self.kept)


# A sink takes each chunk of an attention call in order, e.g. kernels.maps.MapsSink. A sink with
# `wants_stats = True` lets the path compute the row statistics in its own pass (Chunk.stats).
ChunkSink = Callable[[Chunk], None]


@dataclass
class Rows:
    """What one chunk produced for the result: output rows, their lse (or None) and empty flags."""

    out: torch.Tensor  # (B, H, c, Dv)
    lse: torch.Tensor | None
    empty: torch.Tensor  # (B, H, c) bool
    chunk: Chunk | None = None  # handed to the sinks and, with want_probs, stored


def run_chunks(q: torch.Tensor, nk: int, dv: int, step: Callable[[int, int], Rows], *, chunk: int,
               sinks=(), want_probs: bool = False, want_lse: bool = True) -> AttnOut:
    """The query-chunk loop every path shares: step(q0, q1) computes one chunk; its rows go into the
    result, its Chunk to the sinks (in order) and, with want_probs, into the dense probabilities.
    Memory is O(chunk × Nk) besides the result."""
    B, H, N, _ = q.shape
    out = q.new_empty(B, H, N, dv, dtype=torch.float32)
    lse = q.new_full((B, H, N), NEG_INF, dtype=torch.float32) if want_lse else None
    empty = torch.zeros(B, H, N, dtype=torch.bool, device=q.device)
    probs = q.new_zeros(B, H, N, nk, dtype=torch.float32) if want_probs else None
    for q0, q1 in chunk_ranges(N, chunk):
        rows = step(q0, q1)
        out[:, :, q0:q1] = rows.out
        empty[:, :, q0:q1] = rows.empty
        if lse is not None and rows.lse is not None:
            lse[:, :, q0:q1] = rows.lse
        if rows.chunk is not None:
            if probs is not None:
                probs[:, :, q0:q1, rows.chunk.cols] = rows.chunk.p
            for sink in sinks:
                sink(rows.chunk)
    return AttnOut(out=out, lse=lse, empty=empty, probs=probs)


def mask_coverage(allowed, B: int, H: int, N: int, nk: int, chunk: int, device):
    """(key_ok (B, H, Nk), row_ok (B, H, N)) bool from allowed(q0, q1), or (None, None) when it keeps all.

    key_ok: some query may see the key; row_ok: the query may see some key. O(chunk × Nk) memory."""
    if allowed(0, min(N, chunk)) is None:
        return None, None
    key_ok = torch.zeros(B, H, nk, dtype=torch.bool, device=device)
    row_ok = torch.zeros(B, H, N, dtype=torch.bool, device=device)
    for q0, q1 in chunk_ranges(N, chunk):
        m = allowed(q0, q1).expand(B, H, q1 - q0, nk)
        key_ok |= m.any(-2)
        row_ok[:, :, q0:q1] = m.any(-1)
    return key_ok, row_ok
