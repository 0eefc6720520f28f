"""timm ViTs and their kin (DeiT, DINOv2, SigLIP, CLIP...): timm's `Attention`."""

from __future__ import annotations

from models import pattern
from models.inject import run_attention

ATTENTION = "timm.layers.attention.Attention"


def forward(self, x, attn_mask=None, is_causal=False, **_):
    """timm `Attention.forward` with the score/softmax/value product handed to attnscope."""
    B, N, _ = x.shape
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    return attend_and_project(self, q, k, v, attn_mask, gate)


def attend_and_project(self, q, k, v, attn_mask, gate):
    """The tail timm's attention modules share: attention by attnscope, then norm, gate and projection."""
    B, _, N, _ = q.shape
    out, _ = run_attention(self, q, k, v, attn_mask, self.scale)
    x = self.norm(out.transpose(1, 2).reshape(B, N, -1))
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def describe(model, modules) -> list[str]:
    return [pattern.GLOBAL] * len(modules)
