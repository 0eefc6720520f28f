"""Multiscale attention maps without N×N: pooled maps, row statistics, exact tiles.

`MapsSink` takes the chunks of one attention call (kernels/core.py), so a trace of any length keeps
O(R² + N) numbers per head; only the kept key blocks of each chunk are ever read, so empty tiles
are zero by construction. `exact_tile` rebuilds any query-range × key-range tile from q, k and the
log-sum-exp of each row.
"""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.core import Chunk
from kernels.native import NativeAttention
from kernels.reference import tile_scores
from kernels.variants.base import Variant, VariantError

STATS = ("entropy", "distance", "sink", "maxp")  # stored as L{l}_{name}, each (H, N)
LEARNED_SINK = "learned_sink"  # also stored, (H, N), for a model with learned sinks: the mass the sink absorbed


def pool_bins(n: int, r: int, device=None) -> torch.Tensor:
    """bin(i) = floor(i·R/N) with R = min(r, n): the tile row (or column) of each position."""
    r = min(r, n)
    return (torch.arange(n, device=device) * r) // n


def token_distance(ctx: TokenContext, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
    """d(i, j): |i − j| in tokens, or the Euclidean distance in grid cells for ViT patches (0 for special)."""
    if ctx.kind != "vit":
        return (qi - kj).abs().float()
    dr = (ctx.row[qi] - ctx.row[kj]).float()
    dc = (ctx.col[qi] - ctx.col[kj]).float()
    d = torch.sqrt(dr * dr + dc * dc)
    return torch.where(ctx.special[qi] | ctx.special[kj], torch.zeros_like(d), d)


def row_stats(chunk: Chunk, ctx: TokenContext, names=STATS) -> dict[str, torch.Tensor]:
    """Row statistics of one chunk by their definitions over its probabilities, (B, H, c) each:
    entropy −Σ p log p, distance Σ p·d(i, j), sink p[key 0], maxp max p."""
    p, kv_idx = chunk.p, chunk.kv_idx

    def distance():
        qi = torch.arange(chunk.q0, chunk.q1, device=p.device)
        return torch.einsum("bhcw,cw->bhc", p, token_distance(ctx, qi[:, None], kv_idx[None, :]))

    rules = {
        "entropy": lambda: torch.special.entr(p).sum(-1),
        "distance": distance,
        "sink": lambda: p[..., 0] if int(kv_idx[0]) == 0 else p.new_zeros(p.shape[:-1]),
        "maxp": lambda: p.amax(-1),
    }
    return {name: rules[name]() for name in names}


class MapsSink:
    """Accumulates pooled maps (optional) and row statistics from the chunks of an attention call."""

    wants_stats = True  # the softmax path may hand over row statistics computed in its own pass

    def __init__(self, batch: int, heads: int, n: int, nk: int, ctx: TokenContext, *, pooled: int | None, device):
        self.ctx = ctx.to(device)
        self.stats = {name: torch.zeros(batch, heads, n, device=device) for name in STATS}
        self.nk = nk
        self.rows = pool_bins(n, pooled, device) if pooled else None
        if pooled:
            self.cols = pool_bins(nk, pooled, device)
            rq, rk = int(self.rows[-1]) + 1, int(self.cols[-1]) + 1
            self.pooled_sum = torch.zeros(batch, heads, rq, rk, dtype=torch.float64, device=device)
            self.tile_size = torch.bincount(self.rows)[:, None] * torch.bincount(self.cols)[None, :]
            self.even = nk % rk == 0  # every column tile has nk / R keys

    def __call__(self, chunk: Chunk) -> None:
        q0, q1 = chunk.q0, chunk.q1
        stats = dict(chunk.stats or {})
        missing = [name for name in STATS if name not in stats]
        if missing:
            stats.update(row_stats(chunk, self.ctx, missing))
        # added, not assigned: a variant run in two passes over complementary heads (p zero on the
        # other heads) sums to the right statistics
        for name in STATS:
            self.stats[name][..., q0:q1] += stats[name]
        if chunk.sink_mass is not None:
            if LEARNED_SINK not in self.stats:
                self.stats[LEARNED_SINK] = torch.zeros_like(self.stats["entropy"])
            self.stats[LEARNED_SINK][..., q0:q1] += chunk.sink_mass
        if self.rows is not None:
            sums, tiles = self._column_tiles(chunk)
            rows = torch.zeros(*sums.shape[:2], self.pooled_sum.shape[2], sums.shape[-1], dtype=torch.float64,
                               device=sums.device)
            rows.index_add_(2, self.rows[q0:q1], sums.double())
            self.pooled_sum[..., tiles] += rows

    def _column_tiles(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (B, H, c, T), tiles (T,)): p summed over the column tiles the chunk's keys fall in."""
        p, kv_idx = chunk.p, chunk.kv_idx
        w, r = p.shape[-1], self.pooled_sum.shape[-1]
        tile = self.nk // r
        if self.even and w % tile == 0 and int(kv_idx[0]) % tile == 0:
            heads = kv_idx.view(-1, tile)
            if bool((heads == heads[:, :1] + torch.arange(tile, device=p.device)).all()):  # whole tiles only
                return p.reshape(*p.shape[:-1], w // tile, tile).sum(-1), heads[:, 0] // tile
        tile_of = self.cols[kv_idx]  # non-decreasing: each tile is one run of columns
        starts = torch.cat([kv_idx.new_zeros(1), (tile_of[1:] != tile_of[:-1]).nonzero().squeeze(1) + 1])
        bounds = torch.cat([starts, kv_idx.new_tensor([w])])
        csum = torch.nn.functional.pad(p.cumsum(-1), (1, 0))
        edges = csum[..., bounds]
        return edges[..., 1:] - edges[..., :-1], tile_of[starts]

    def absorb(self, maps) -> None:
        """Take what a fused maps pass (kernels.triton.triton_maps) computed for every row at once."""
        for name in STATS:
            self.stats[name] += maps.stats[name]
        if self.rows is not None:
            self.pooled_sum += maps.pooled().double() * self.tile_size

    def pooled(self) -> torch.Tensor:
        """(B, H, R, R): the mean probability in each tile."""
        return (self.pooled_sum / self.tile_size).float()


def exact_tile(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    rows: tuple[int, int],
    cols: tuple[int, int],
    *,
    scale: float,
    ctx: TokenContext,
    variant: Variant,
    model_mask=None,
    native: NativeAttention | None = None,
) -> torch.Tensor:
    """probs[q0:q1, k0:k1] = exp(s − lse) under the model's own attention and the variant's masks and
    biases, for (H, N, D) q, k and (H, N) lse (which includes any learned sink).

    Exact for every variant whose probabilities are a softmax of (masked, biased) scores.
    """
    if variant.row_mask is not None or variant.row_probs is not None or variant.attend is not None:
        raise VariantError(f"{variant.name} changes whole rows; tiles of it need the dense trace (shorter input)")
    (q0, q1) = rows
    s = tile_scores(q[None], k[None], rows, cols, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask,
                    native=native)[0]
    row_lse = lse[:, q0:q1, None].float()
    p = torch.where(torch.isneginf(row_lse), torch.zeros_like(s), torch.exp(s - row_lse))
    weight = variant.head_weight(ctx, q.shape[0])
    return p if weight is None else p * weight.to(p)[:, None, None]
