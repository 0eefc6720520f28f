"""timm EVA / EVA02 (rotary position embedding on the patch tokens): `EvaAttention`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.families.timm_vit import attend_and_project, describe  # noqa: F401  (describe: every layer global)
from models.loaded import ModelError

ATTENTION = "timm.models.eva.EvaAttention"


def forward(self, x, rope=None, attn_mask=None, is_causal=False):
    """`EvaAttention.forward` with the scores, softmax and values computed by attnscope."""
    from timm.layers import apply_rot_embed_cat

    if is_causal:
        raise ModelError("a causal EVA attention is not traced; attnscope traces EVA as a vision transformer")
    B, N, _ = x.shape
    gate = self.gate(x).sigmoid() if self.gate is not None else None
    if self.qkv is not None:
        bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, weight=self.qkv.weight, bias=bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (p(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
    q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:  # the prefix tokens (CLS, registers) carry no rotary embedding
        npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
    return attend_and_project(self, q, k, v, attn_mask, gate)
