"""Multiscale attention maps without N×N: pooled maps, row statistics, exact tiles.

`MapsSink` consumes the probabilities of one query chunk at a time (a reference-path sink),
so a trace of any length keeps O(R² + N) numbers per head. `exact_tile` rebuilds any
query-range × key-range tile from q, k and the log-sum-exp of each row.
"""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from kernels.reference import allowed_fn, index_grid
from kernels.variants.base import Variant, VariantError

STATS = ("entropy", "distance", "sink", "maxp")  # stored as L{l}_{name}, each (H, N)


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


class MapsSink:
    """Accumulates pooled maps (optional) and row statistics from query chunks of probabilities."""

    accepts_prefix = True  # p may cover only keys [0, w): the reference path skips keys after causal rows

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
            self.col_starts = torch.searchsorted(self.cols, torch.arange(rk, device=device))

    def __call__(self, q0: int, q1: int, p: torch.Tensor, s: torch.Tensor) -> None:
        w = p.shape[-1]
        qi = torch.arange(q0, q1, device=p.device)
        d = token_distance(self.ctx, qi[:, None], torch.arange(w, device=p.device)[None, :])  # (c, w)
        # added, not assigned: a variant run in two passes over complementary heads (p zero on the
        # other heads) sums to the right statistics
        self.stats["entropy"][..., q0:q1] += torch.special.entr(p).sum(-1)
        self.stats["distance"][..., q0:q1] += torch.einsum("bhcw,cw->bhc", p, d)
        self.stats["sink"][..., q0:q1] += p[..., 0]
        self.stats["maxp"][..., q0:q1] += p.amax(-1)
        if self.rows is not None:
            self.pooled_sum.index_add_(2, self.rows[q0:q1], self._pool_cols(p).double())

    def _pool_cols(self, p: torch.Tensor) -> torch.Tensor:
        """(B, H, c, w) -> (B, H, c, R): the sum over each column tile."""
        w, r = p.shape[-1], self.pooled_sum.shape[-1]
        tile = self.nk // r
        if self.nk % r == 0 and w % tile == 0:  # equal tiles: a reshape and one sum
            sums = p.reshape(p.shape[:-1] + (w // tile, tile)).sum(-1)
            return torch.nn.functional.pad(sums, (0, r - w // tile))
        csum = torch.nn.functional.pad(p.cumsum(-1), (1, 0))  # uneven tiles: from one cumulative sum
        bounds = torch.cat([self.col_starts, self.col_starts.new_tensor([self.nk])]).clamp(max=w)
        edges = csum[..., bounds]  # (B, H, c, R+1)
        return edges[..., 1:] - edges[..., :-1]

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
) -> torch.Tensor:
    """probs[q0:q1, k0:k1] = exp(s − lse) under the variant's masks and biases, for (H, N, D) q, k.

    Exact for every variant whose probabilities are a softmax of (masked, biased) scores.
    """
    if variant.row_mask is not None or variant.row_probs is not None or variant.attend is not None:
        raise VariantError(f"{variant.name} changes whole rows; tiles of it need the dense trace (shorter input)")
    (q0, q1), (k0, k1) = rows, cols
    H, _, _ = q.shape
    ctx = ctx.to(q.device)
    s = torch.matmul(q[:, q0:q1].float(), k[:, k0:k1].float().transpose(-1, -2)) * scale  # (H, c, w)
    b, h, qi, kj = index_grid(1, H, q0, q1, k1, q.device)
    kj = kj[..., k0:k1]
    score_mod = variant.score_mod(ctx)
    if score_mod is not None:
        s = score_mod(s[None], b, h, qi, kj)[0]
    keep = allowed_fn(variant, ctx, model_mask, 1, H, k.shape[1], q.device)(q0, q1)
    if keep is not None:
        s = s.masked_fill(~keep[..., k0:k1].expand(1, H, -1, -1)[0], float("-inf"))
    row_lse = lse[:, q0:q1, None].float()
    return torch.where(torch.isneginf(row_lse), torch.zeros_like(s), torch.exp(s - row_lse))
