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
        self.n, self.nk = n, nk
        self.rows = pool_bins(n, pooled, device) if pooled else None
        if pooled:
            self.cols = pool_bins(nk, pooled, device)
            rq, rk = int(self.rows[-1]) + 1, int(self.cols[-1]) + 1
            self.pooled_sum = torch.zeros(batch, heads, rq, rk, dtype=torch.float64, device=device)
            self.tile_size = torch.bincount(self.rows)[:, None] * torch.bincount(self.cols)[None, :]

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
            r0, r1 = int(self.rows[q0]), int(self.rows[q1 - 1]) + 1
            sums, tiles = self._column_tiles(self._row_bins(chunk.p, q0, q1, r0, r1), chunk.kv_idx)
            t0, t1 = int(tiles[0]), int(tiles[-1]) + 1
            cols = slice(t0, t1) if t1 - t0 == len(tiles) else tiles
            self.pooled_sum[:, :, r0:r1, cols] += sums.double()

    def _row_bins(self, p: torch.Tensor, q0: int, q1: int, r0: int, r1: int) -> torch.Tensor:
        """(B, H, r1 − r0, w): p summed over the query rows of each row bin the chunk covers (rows first:
        a reduction over a leading axis, vectorised along the keys)."""
        bins = self.pooled_sum.shape[2]
        step = self.n // bins
        if self.n % bins == 0 and q0 % step == 0 and (q1 - q0) % step == 0:
            return p.reshape(*p.shape[:2], (q1 - q0) // step, step, p.shape[-1]).sum(3)
        return p.new_zeros(*p.shape[:2], r1 - r0, p.shape[-1]).index_add_(2, self.rows[q0:q1] - r0, p)

    def _column_tiles(self, p: torch.Tensor, kv_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (..., T), tiles (T,)): p (..., w) summed over the column tiles the keys kv_idx fall in."""
        w, r = p.shape[-1], self.pooled_sum.shape[-1]
        tile = self.nk // r
        if self.nk % r == 0 and w % tile == 0 and int(kv_idx[0]) % tile == 0:
            heads = kv_idx.view(-1, tile)
            if bool((heads == heads[:, :1] + torch.arange(tile, device=p.device)).all()):  # whole tiles only
                return p.reshape(*p.shape[:-1], w // tile, tile).sum(-1), heads[:, 0] // tile
        tile_of = self.cols[kv_idx]  # non-decreasing: each tile is one run of columns
        starts = torch.cat([kv_idx.new_zeros(1), (tile_of[1:] != tile_of[:-1]).nonzero().squeeze(1) + 1])
        bounds = torch.cat([starts, kv_idx.new_tensor([w])])
        edges = torch.nn.functional.pad(p.cumsum(-1), (1, 0))[..., bounds]
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
