"""timm Swin: windowed and shifted-window attention, traced on the input patch grid.

Swin computes attention inside M×M windows of its stage's grid (every other block shifts them by
M/2, and a -100 bias keeps the regions the cyclic shift brought together apart), with a relative
position bias inside each window; later stages merge 2×2 cells (PatchMerging). attnscope hooks each
block's `_attn` and computes the same attention on the grid itself instead of on window batches:

- one query per grid cell, in row-major order; keys: the cells of its own (shifted) window, found
  with timm's own `window_partition`; pair bias: the window's relative position bias plus the
  block's shift mask (-100), exactly as the block adds them;
- a later stage is expanded to the input patch grid: every patch carries the query, key and value
  of the merged cell it belongs to. Softmax over the copies spreads a cell's weight evenly over its
  patches (each gets p / f² for an f×f cell), the row's LSE grows by log f², and the output is
  unchanged. So every layer of the trace is an (H·W)×(H·W) map over the input patches, the views'
  grid is the patch grid, and a patch's map shows what its cell attended to, drawn on the image.

Stages keep their own head counts (Swin-T: 3, 6, 12, 24): each layer's arrays have their own H.
"""

from __future__ import annotations

import types

import torch

from kernels.native import NativeAttention
from models import memory, pattern
from models.inject import DenseMask, run_attention
from models.loaded import ModelError

ATTENTION = "timm.models.swin_transformer.WindowAttention"


def install(model, modules) -> None:
    """Each block's `_attn` (shift, partition, attention, merge) replaced by attention on the patch grid."""
    cells = model.patch_embed.grid_size
    for block in _blocks(model, modules):
        block._attn = types.MethodType(_attn, block)
        block._attnscope_factor = cells[0] // block.input_resolution[0]


def _blocks(model, modules) -> list:
    """The Swin block of each WindowAttention module, in order."""
    parent = {id(b.attn): b for b in model.modules() if hasattr(b, "_attn") and hasattr(b, "attn")}
    return [parent[id(m)] for m in modules]


def _attn(self, x):
    """`SwinTransformerBlock._attn` computed on the grid; x and the result are (B, H, W, C) at this stage."""
    attn = self.attn
    B, H, W, C = x.shape
    f = self._attnscope_factor
    heads, n = attn.num_heads, H * W * f * f
    memory.require(heads * n * n * 4, f"Swin layer {attn._attnscope_layer}'s position bias on the {H * f}×{W * f} "
                                      "patch grid")
    window, slot = window_layout(self, H, W)
    keep = window[:, None] == window[None, :]
    rel = attn._get_rel_pos_bias()[0][:, slot[:, None], slot[None, :]]  # (heads, L, L)
    bias = (rel + shift_bias(self, H, W, window, slot)).masked_fill(~keep, 0.0)
    cell = expand(H, W, f)  # for each input patch, its cell at this stage
    q, k, v = attn.qkv(x.reshape(B, H * W, C)).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q, k, v = (t[:, :, cell] for t in (q, k, v))
    native = NativeAttention(pair_bias=bias[:, cell][:, :, cell][None].float())
    out, _ = run_attention(attn, q, k, v, DenseMask(keep[cell][:, cell][None, None]), attn.scale, native)
    # one patch per cell, its top-left one: the outputs of a cell's copies are equal
    first = (torch.arange(H)[:, None] * f * W * f + torch.arange(W)[None, :] * f).reshape(-1)
    out = out[:, :, first].transpose(1, 2).reshape(B, H * W, -1)
    return attn.proj_drop(attn.proj(out)).view(B, H, W, C)


def expand(h: int, w: int, f: int) -> torch.Tensor:
    """(h·f · w·f,) the cell (row-major at this stage) of each input patch (row-major on the patch grid)."""
    rows = torch.arange(h * f) // f
    cols = torch.arange(w * f) // f
    return (rows[:, None] * w + cols[None, :]).reshape(-1)


def window_layout(block, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(window, slot) of each cell of an h×w stage grid, as the block's shift and timm's window_partition place it."""
    from timm.models.swin_transformer import window_partition

    ws, shift = block.window_size, block.shift_size
    if h % ws[0] or w % ws[1]:
        raise ModelError(f"a Swin stage grid of {h}×{w} cells is padded to its {ws[0]}×{ws[1]} windows; attnscope "
                         "traces Swin on inputs whose stage grids are multiples of the window size")
    grid = torch.arange(h * w).view(1, h, w, 1)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    slots = window_partition(grid, ws).reshape(-1, block.window_area)  # (windows, M²): the cell in each slot
    window, slot = torch.empty(h * w, dtype=torch.long), torch.empty(h * w, dtype=torch.long)
    window[slots.reshape(-1)] = torch.arange(slots.shape[0]).repeat_interleave(block.window_area)
    slot[slots.reshape(-1)] = torch.arange(block.window_area).repeat(slots.shape[0])
    return window, slot


def shift_bias(block, h: int, w: int, window: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """(L, L) the block's shift mask on the grid: -100 between regions the cyclic shift put in one window, else 0."""
    mask = block.get_attn_mask(torch.zeros(1, h, w, 1)) if getattr(block, "dynamic_mask", False) else block.attn_mask
    if mask is None:
        return torch.zeros(h * w, h * w)
    return mask.float()[window[:, None], slot[:, None], slot[None, :]]


def own_mask(block) -> torch.Tensor:
    """bool (L, L) on the input patch grid: the keys a patch's cell sees unmasked (its window, its shift region)."""
    h, w = block.input_resolution
    window, slot = window_layout(block, h, w)
    keep = (window[:, None] == window[None, :]) & (shift_bias(block, h, w, window, slot) == 0)
    cell = expand(h, w, block._attnscope_factor)
    return keep[cell][:, cell]


def describe(model, modules) -> list[str]:
    out = []
    for block in _blocks(model, modules):
        ws, shift, f = block.window_size, block.shift_size, block._attnscope_factor
        phrase = f"shifted window {ws[0]}×{ws[1]} (shift {shift[0]})" if any(shift) else f"window {ws[0]}×{ws[1]}"
        out.append(pattern.join(phrase, f > 1 and f"on {f}×{f} merged patches", pattern.RELATIVE_BIAS))
    return out


def own_mask_of(model, modules, layer: int) -> torch.Tensor:
    return own_mask(_blocks(model, modules)[layer])
