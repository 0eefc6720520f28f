"""timm BEiT (relative position bias per layer, or shared): beit's `Attention`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.native import NativeAttention
from models import pattern
from models.inject import run_attention

ATTENTION = "timm.models.beit.Attention"


def forward(self, x, shared_rel_pos_bias=None):
    """beit `Attention.forward` with the scores, softmax and values computed by attnscope."""
    B, N, _ = x.shape
    bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
    qkv = F.linear(x, weight=self.qkv.weight, bias=bias)
    q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    pair_bias = None if self.relative_position_bias_table is None else self._get_rel_pos_bias()
    if shared_rel_pos_bias is not None:
        pair_bias = shared_rel_pos_bias if pair_bias is None else pair_bias + shared_rel_pos_bias
    native = NativeAttention(pair_bias=None if pair_bias is None else pair_bias.float())
    out, _ = run_attention(self, q, k, v, None, self.scale, native)
    return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, -1)))


def describe(model, modules) -> list[str]:
    return [pattern.join(pattern.GLOBAL, pattern.RELATIVE_BIAS)] * len(modules)
