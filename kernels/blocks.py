"""Block plans: which keys each query chunk computes, and where it needs a mask.

FlexAttention's BlockMask idea for the chunked CPU path. The keys of a query chunk are cut into
blocks of KEY_BLOCK; each (chunk, key block) tile is

  empty    no row keeps any key          -> never computed (no scores, no output, no maps)
  full     every row keeps every key     -> computed without any mask
  partial  some kept, some masked        -> computed, then masked

A chunk's plan gathers the keys of its non-empty blocks (a slice when they are contiguous, as for
causal rows) and keeps the keep-mask of its partial tiles only. Plans of static masks are worked
out once per forward pass and reused by every layer (`PlanCache`): the key is the identity of the
variant, of the model's mask object (transformers builds one per layer type and forward pass) and
of the token context's tensors.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from kernels.core import and_masks, index_grid

KEY_BLOCK = 32
GATHER_BELOW = 0.9  # gather the kept blocks only when they are at most this fraction of the candidate keys


@dataclass(eq=False)
class ChunkPlan:
    """The keys one query chunk computes.

    cols: the kept keys (ascending), a slice or a long index; kv_idx the same as a tensor.
    masks: (a, b, bias) for the partial tiles: bias (1|B, 1|H, c, b − a) float, 0 where kept and −inf
        where masked, is added to columns a:b of the gathered scores (an add is far cheaper than a
        broadcast masked_fill); full tiles have none.
    kept: fraction of the candidate tiles computed (1.0 without a mask).
    """

    cols: slice | torch.Tensor
    kv_idx: torch.Tensor
    masks: tuple[tuple[int, int, torch.Tensor], ...]
    kept: float
    _bias: torch.Tensor | None = None
    _keep: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.kv_idx.numel())

    def dense_bias(self) -> torch.Tensor | None:
        """The mask over every gathered column as a (1|B, 1|H, c, w) additive bias, or None when all are
        kept; made once."""
        if self.masks and self._bias is None:
            shape = torch.broadcast_shapes(*(m.shape[:-1] for _, _, m in self.masks))
            bias = torch.zeros(*shape, self.width, device=self.kv_idx.device)
            for a, b, m in self.masks:
                bias[..., a:b] = m
            self._bias = bias
        return self._bias

    def dense_keep(self) -> torch.Tensor | None:
        """The same as a bool keep mask, or None; made once."""
        if self.masks and self._keep is None:
            self._keep = torch.isfinite(self.dense_bias())
        return self._keep

    def mask_scores(self, s: torch.Tensor) -> torch.Tensor:
        """Mask the partial tiles of the scores s (..., c, w), in place."""
        for a, b, bias in self.masks:
            s[..., a:b] += bias
        return s


def chunk_plan(keep: torch.Tensor | None, hi: int, device, *, block: int | None = None) -> ChunkPlan:
    """The plan of one chunk from its keep mask (broadcastable to (B, H, c, hi)) over keys [0, hi).

    None keeps every key. A tile counts as kept when any batch item, head or row keeps a key of it,
    and as full when all of them keep all of its keys, so one gather serves every head.
    """
    if keep is None:
        return ChunkPlan(slice(0, hi), torch.arange(hi, device=device), (), 1.0)
    block = block or KEY_BLOCK
    nb = -(-hi // block)
    pad = nb * block - hi

    def per_tile(fill: bool, reduce):  # (nb,): reduce over everything but the key block
        m = torch.nn.functional.pad(keep, (0, pad), value=fill)
        return reduce(reduce(m.reshape(-1, m.shape[-1]), 0).reshape(nb, block), 1)

    any_kept = per_tile(False, torch.any)
    all_kept = per_tile(True, torch.all)
    kept_blocks = any_kept.nonzero().squeeze(1).tolist()
    if not kept_blocks:  # no row sees any key: one masked key keeps the shapes valid
        dead = torch.full((*keep.shape[:-1], 1), float("-inf"), device=device)
        return ChunkPlan(slice(0, 1), torch.zeros(1, dtype=torch.long, device=device), ((0, 1, dead),), 0.0)
    kept = len(kept_blocks) / nb
    if kept > GATHER_BELOW:  # gathering would copy nearly every key: compute them all, mask the empty ones
        kept_blocks = list(range(nb))
    runs = _runs(kept_blocks)
    if len(runs) == 1:
        cols = slice(runs[0][0] * block, min(hi, (runs[0][1] + 1) * block))
        kv_idx = torch.arange(cols.start, cols.stop, device=device)
    else:
        kv_idx = torch.cat([torch.arange(r0 * block, min(hi, (r1 + 1) * block), device=device) for r0, r1 in runs])
        cols = kv_idx
    segments, at = [], 0  # [a, b, tiles]: adjacent masked blocks share one mask
    for blk in kept_blocks:
        lo, up = blk * block, min(hi, (blk + 1) * block)
        if not bool(all_kept[blk]):
            if segments and segments[-1][1] == at:
                segments[-1][1] += up - lo
                segments[-1][2].append(keep[..., lo:up])
            else:
                segments.append([at, at + up - lo, [keep[..., lo:up]]])
        at += up - lo
    masks = tuple((a, b, torch.zeros(()).masked_fill(~_cat(tiles), float("-inf"))) for a, b, tiles in segments)
    return ChunkPlan(cols, kv_idx, masks, kept)


def _cat(tiles: list[torch.Tensor]) -> torch.Tensor:
    if len(tiles) == 1:
        return tiles[0]
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tiles))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tiles], dim=-1)


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    runs = []
    for b in blocks:
        if runs and runs[-1][1] == b - 1:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((b, b))
    return runs


# ---------------------------------------------------------------- what a query may see


def model_mask_of(model_mask, ctx):
    """The model mask to apply, or None when it adds nothing to the context (plain causal, no mask)."""
    if model_mask is None or getattr(model_mask, "redundant_for", lambda c: False)(ctx):
        return None
    return model_mask


def allowed_fn(variant, ctx, model_mask, batch: int, heads: int, nk: int, device) -> Allowed:
    """What each query may see: the model's own mask AND the context's causality AND the variant's
    static mask_mod, as `Allowed`. A variant with `widens_mask` (prefix_lm) widens the model's mask
    on purpose: the rows of its prefix also see what the prefix's last row sees. No other variant
    can widen it."""
    return Allowed(variant, ctx, model_mask, batch, heads, nk, device)


class Allowed:
    """f(q0, q1, hi=nk) -> 4-D bool keep mask broadcastable to (B, H, q1 − q0, hi) over keys [0, hi), or
    None when every key is kept; `reach(q1)`: no row before q1 sees a key at or after it."""

    def __init__(self, variant, ctx, model_mask, batch: int, heads: int, nk: int, device):
        self.mask_mod = variant.mask_mod(ctx)
        self.model_mask = model_mask_of(model_mask, ctx)
        self.model_mod = getattr(self.model_mask, "mask_mod", None)
        self.causal = ctx.causal and ctx.n == nk
        self.prefix = variant.prefix_length(ctx) if getattr(variant, "widens_mask", "") else 0
        self.batch, self.heads, self.nk, self.device = batch, heads, nk, device

    def reach(self, q1: int) -> int:
        return min(self.nk, max(q1, self.prefix)) if self.causal else self.nk

    def model(self, q0: int, q1: int, hi: int) -> torch.Tensor | None:
        """The model's own mask AND causality."""
        keep = None
        if self.model_mod is not None:
            b, h, qi, kj = index_grid(self.batch, 1, q0, q1, hi, self.device)
            keep = self.model_mod(b, h, qi, kj)
        elif self.model_mask is not None:
            keep = self.model_mask.rows(q0, q1)
            keep = None if keep is None else keep[..., :hi].to(self.device)
        if self.causal:
            qi = torch.arange(q0, q1, device=self.device)[:, None]
            keep = and_masks(keep, (torch.arange(hi, device=self.device)[None, :] <= qi)[None, None])
        return keep

    def __call__(self, q0: int, q1: int, hi: int | None = None) -> torch.Tensor | None:
        hi = self.nk if hi is None else hi
        keep = self.model(q0, q1, hi)
        if self.prefix and q0 < self.prefix and keep is not None:  # rows of the prefix: widened, on purpose
            last = self.model(self.prefix - 1, self.prefix, min(self.prefix, hi))  # (..., 1, ≤ prefix)
            keep = keep.expand(*keep.shape[:-2], q1 - q0, hi).clone()
            keep[..., : min(q1, self.prefix) - q0, : last.shape[-1]] |= last
        if self.mask_mod is not None:
            b, h, qi, kj = index_grid(self.batch, self.heads, q0, q1, hi, self.device)
            keep = and_masks(keep, self.mask_mod(b, h, qi, kj))
        return keep


class PlanCache:
    """Plans of static masks for one forward pass, reused by every layer; a few passes are kept (LRU),
    and at most `max_bytes` of their masks (a dense-ish mask of a long input is not kept: it is
    worked out again per layer instead of holding hundreds of MB).

    Held objects are compared by identity, so a recycled id() never matches; a model mask that
    depends on the input (padding) is keyed by its own object like any other.
    """

    def __init__(self, size: int = 4, max_bytes: int = 128 << 20):
        self.size, self.max_bytes = size, max_bytes
        self._entries: OrderedDict = OrderedDict()  # key -> (held, {q0: plan})
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def plans(self, held: tuple, key: tuple) -> Plans:
        """The plans q0 -> ChunkPlan of this (held objects, key); none yet on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or any(a is not b for a, b in zip(entry[0], held)):
                entry = self._entries[key] = (held, {})
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            return Plans(self, entry[1])

    def _room(self, plans: dict, need: int) -> bool:
        """Whether `need` more bytes fit; older entries are dropped to make room."""
        with self._lock:
            used = sum(_bytes(p) for _, held in self._entries.values() for p in held.values())
            while used + need > self.max_bytes and len(self._entries) > 1:
                key, (_, old) = next(iter(self._entries.items()))
                if old is plans:
                    break
                used -= sum(_bytes(p) for p in old.values())
                del self._entries[key]
            return used + need <= self.max_bytes


class Plans:
    """One entry of a PlanCache: get and put chunk plans."""

    def __init__(self, cache: PlanCache, plans: dict):
        self.cache, self._plans = cache, plans

    def get(self, q0: int) -> ChunkPlan | None:
        return self._plans.get(q0)

    def __setitem__(self, q0: int, plan: ChunkPlan) -> None:
        if self.cache._room(self._plans, _bytes(plan)):
            self._plans[q0] = plan


def _bytes(plan: ChunkPlan) -> int:
    """The plan's masks, twice: its dense bias and keep mask (made on first use) are about as large again."""
    return 2 * sum(m.numel() * m.element_size() for _, _, m in plan.masks)


PLANS = PlanCache()
