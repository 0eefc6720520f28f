"""Block masks: which key blocks each query block must visit, FlexAttention's BlockMask layout.

The attention matrix is cut into tiles of `block_m` queries × `block_n` keys. A tile is

  empty   every (i, j) in it is masked           -> never visited
  full    every (i, j) in it is kept             -> visited without any per-element mask
  partial some kept, some masked (or it overhangs the end of the keys)
                                                 -> visited with the per-element mask

Per (batch, head, query block) the mask stores (int32 throughout; batch and head dimensions
are 1 when the mask does not depend on them, and kernels read them with stride 0):

  kv_num_blocks      (Bm, Hm, nQB)        number of partial key blocks
  kv_indices         (Bm, Hm, nQB, nKB)   their key-block indices, ascending, first kv_num_blocks valid
  full_kv_num_blocks (Bm, Hm, nQB)        number of full key blocks
  full_kv_indices    (Bm, Hm, nQB, nKB)   their indices, ascending

which is torch.nn.attention.flex_attention.BlockMask's forward half. Memory is O(N²/block²):
the dense keep mask is evaluated one chunk of query rows at a time and reduced to block counts
on the fly, never held whole (FlexAttention's create_block_mask materialises it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# keep(q0, q1) -> bool mask broadcastable to (B, H, q1 - q0, Nk), or None when every key is kept
KeepFn = Callable[[int, int], "torch.Tensor | None"]

CHUNK_ELEMS = 1 << 24  # elements of the dense keep mask evaluated at once (16 M bools)


@dataclass
class BlockMask:
    kv_num_blocks: torch.Tensor  # int32 (Bm, Hm, nQB)
    kv_indices: torch.Tensor  # int32 (Bm, Hm, nQB, nKB)
    full_kv_num_blocks: torch.Tensor  # int32 (Bm, Hm, nQB)
    full_kv_indices: torch.Tensor  # int32 (Bm, Hm, nQB, nKB)
    block_m: int
    block_n: int
    q_len: int
    kv_len: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Bm, Hm, nQB, nKB)."""
        return tuple(self.kv_indices.shape)

    def dense_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(partial, full) as bool (Bm, Hm, nQB, nKB) block-level maps."""
        return _to_dense(self.kv_num_blocks, self.kv_indices), _to_dense(self.full_kv_num_blocks, self.full_kv_indices)

    def visited_fraction(self) -> float:
        """Fraction of the tiles a kernel visits (partial + full), averaged over batch and heads."""
        nqb, nkb = self.shape[2:]
        visited = (self.kv_num_blocks + self.full_kv_num_blocks).sum().item()
        return visited / (self.kv_num_blocks.numel() * nkb)

    def expand(self, batch: int, heads: int) -> BlockMask:
        """The same mask with batch and head dimensions broadcast (stride 0, no copy)."""
        bm, hm, nqb, nkb = self.shape
        return BlockMask(
            self.kv_num_blocks.expand(batch, heads, nqb), self.kv_indices.expand(batch, heads, nqb, nkb),
            self.full_kv_num_blocks.expand(batch, heads, nqb), self.full_kv_indices.expand(batch, heads, nqb, nkb),
            self.block_m, self.block_n, self.q_len, self.kv_len,
        )

    def with_key_padding(self, valid: torch.Tensor) -> BlockMask:
        """AND the mask with a per-batch key-validity vector `valid` bool (B, Nk) (padding keys False).

        Done at block level: a key block with every key valid changes nothing, with none valid it
        disappears, with some valid a full tile becomes partial.
        """
        B, nk = valid.shape
        nkb = self.shape[3]
        pad = nkb * self.block_n - nk
        counts = torch.nn.functional.pad(valid.to(torch.int32), (0, pad)).view(B, nkb, self.block_n).sum(-1)
        any_valid = (counts > 0)[:, None, None, :]  # (B, 1, 1, nKB)
        all_valid = (counts == self.block_n)[:, None, None, :]
        partial, full = self.dense_blocks()
        new_partial = (partial & any_valid) | (full & any_valid & ~all_valid)
        new_full = full & all_valid
        return BlockMask.from_dense_blocks(new_partial, new_full, self.block_m, self.block_n, self.q_len, self.kv_len)

    @classmethod
    def from_dense_blocks(cls, partial: torch.Tensor, full: torch.Tensor, block_m: int, block_n: int,
                          q_len: int, kv_len: int) -> BlockMask:
        """From block-level bool maps (Bm, Hm, nQB, nKB); partial and full must not overlap."""
        kv_num, kv_idx = _to_ordered(partial)
        full_num, full_idx = _to_ordered(full & ~partial)
        return cls(kv_num, kv_idx, full_num, full_idx, block_m, block_n, q_len, kv_len)


def build_block_mask(
    keep: KeepFn, batch: int, heads: int, q_len: int, kv_len: int, *, block_m: int, block_n: int, device,
    chunk_elems: int = CHUNK_ELEMS,
) -> BlockMask:
    """Evaluate `keep` one chunk of query blocks at a time and reduce every tile to empty/partial/full.

    The batch and head dimensions of the result follow what `keep` returns: a mask that ignores
    the head (size 1 in that dimension) gives Hm = 1. A tile overhanging the last key is always
    partial (the kernel bounds-checks only partial tiles); rows past the last query are ignored.
    """
    nqb, nkb = _cdiv(q_len, block_m), _cdiv(kv_len, block_n)
    partial_parts, full_parts = [], []
    key_pad = nkb * block_n - kv_len
    rows_per_chunk = block_m  # the first chunk probes whether the mask depends on batch / head
    q0 = 0
    while q0 < nqb * block_m:
        q1 = min(q0 + rows_per_chunk, nqb * block_m)
        valid_q1 = min(q1, q_len)
        m = keep(q0, valid_q1)
        if m is None:
            m = torch.ones(1, 1, valid_q1 - q0, kv_len, dtype=torch.bool, device=device)
        m = m.to(device=device, dtype=torch.bool)
        while m.dim() < 4:
            m = m[None]
        m = m.expand(*m.shape[:2], valid_q1 - q0, kv_len)
        # rows past q_len: neutral (they count as kept for "full", add nothing to "any")
        kept = torch.nn.functional.pad(m.to(torch.int32), (0, key_pad, 0, q1 - valid_q1))
        bm, hm = kept.shape[:2]
        cnt = kept.view(bm, hm, (q1 - q0) // block_m, block_m, nkb, block_n).sum(dim=(3, 5))
        rows = torch.full(((q1 - q0) // block_m,), block_m, device=device)
        if q1 > valid_q1:  # the last query block is cut short
            rows[-1] = block_m - (q1 - valid_q1)
        rows = rows[None, None, :, None]
        partial_parts.append((cnt > 0) & (cnt < rows * block_n))
        full_parts.append(cnt == rows * block_n)
        q0 = q1
        rows_per_chunk = max(block_m, chunk_elems // max(1, kv_len * bm * hm) // block_m * block_m)
    bm = max(p.shape[0] for p in partial_parts)
    hm = max(p.shape[1] for p in partial_parts)
    partial = torch.cat([p.expand(bm, hm, -1, -1) for p in partial_parts], dim=2)
    full = torch.cat([f.expand(bm, hm, -1, -1) for f in full_parts], dim=2)
    if key_pad:  # a tile overhanging the keys is never full: the kernel bounds-checks only partial tiles
        partial[..., -1] |= full[..., -1]
        full[..., -1] = False
    return BlockMask.from_dense_blocks(partial, full, block_m, block_n, q_len, kv_len)


def block_mask_from_mask_mod(
    mask_mod, batch: int | None, heads: int | None, q_len: int, kv_len: int, *, block_m: int = 128,
    block_n: int = 128, device="cpu", chunk_elems: int = CHUNK_ELEMS,
) -> BlockMask:
    """From a FlexAttention-style mask_mod(b, h, q_idx, kv_idx) -> bool (None: batch/heads shared)."""
    b_idx = torch.arange(batch or 1, device=device)[:, None, None, None]
    h_idx = torch.arange(heads or 1, device=device)[None, :, None, None]
    k_idx = torch.arange(kv_len, device=device)[None, None, None, :]

    def keep(q0, q1):
        return mask_mod(b_idx, h_idx, torch.arange(q0, q1, device=device)[None, None, :, None], k_idx)

    return build_block_mask(keep, batch or 1, heads or 1, q_len, kv_len, block_m=block_m, block_n=block_n,
                            device=device, chunk_elems=chunk_elems)


def block_mask_from_table(table: torch.Tensor, table_block: tuple[int, int], q_len: int, kv_len: int, *,
                          block_m: int, block_n: int) -> BlockMask:
    """From a coarse bool table (Ht, nQt, nKt) at `table_block` = (rows, cols) per table cell.

    Element (i, j) of head h is kept when table[h, i // rows, j // cols]; the kernel block sizes
    need not divide the table's.
    """
    tq, tk = table_block
    table = table.bool()
    if table.dim() == 2:
        table = table[None]
    device = table.device
    ti_all = torch.arange(kv_len, device=device) // tk

    def keep(q0, q1):
        ti = torch.arange(q0, q1, device=device) // tq
        return table[:, ti][:, :, ti_all][None]  # (1, Ht, c, Nk)

    return build_block_mask(keep, 1, table.shape[0], q_len, kv_len, block_m=block_m, block_n=block_n,
                            device=device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _to_ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool (..., nKB) -> (count (...), indices (..., nKB)): the True positions first, ascending."""
    num = blocks.sum(-1, dtype=torch.int32)
    # stable sort of the keys ~blocks puts True (0) before False (1) and keeps ascending order
    idx = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


def _to_dense(num: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    nkb = idx.shape[-1]
    valid = torch.arange(nkb, device=idx.device) < num[..., None].long()
    dense = torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
    return dense.scatter(-1, idx.long(), valid)
