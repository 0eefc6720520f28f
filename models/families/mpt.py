"""MPT: ALiBi handed to each attention module as `position_bias`, outside AttentionInterface."""

from __future__ import annotations

from kernels.native import NativeAttention
from models import pattern
from models.inject import run_attention

ATTENTION = "MptAttention"
MASK = "eager"  # MptModel turns its mask into a tensor (`.to(torch.bool)`) before the layers see it


def forward(self, hidden_states, position_bias, cache=None, attention_mask=None, **kwargs):
    """`MptAttention.forward` with the scores, softmax and values computed by attnscope."""
    batch_size, seq_length = hidden_states.shape[:2]
    mixed_qkv = self.Wqkv(hidden_states)
    if self.clip_qkv:
        mixed_qkv = mixed_qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
    query, key, value = (x.reshape(batch_size, seq_length, self.n_heads, self.head_dim).transpose(1, 2)
                         for x in mixed_qkv.chunk(3, dim=2))
    if cache is not None:
        key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
    native = NativeAttention()
    if position_bias is not None:  # (H, 1, max_seq_len), its last Nk columns: one bias per (head, key)
        key_length = key.shape[-2]
        bias = position_bias[:, :, max(0, position_bias.size(2) - key_length):]
        native = NativeAttention(key_bias=bias.squeeze(1)[None].float())
    # MPT's mask is True where a key is hidden
    keep = None if attention_mask is None else ~attention_mask
    out, probs = run_attention(self, query, key, value, keep, self.softmax_scale, native)
    return self.out_proj(out.permute(0, 2, 1, 3).reshape(batch_size, seq_length, -1)), probs


def describe(cfg, modules, kind) -> list[str]:
    return [pattern.join(pattern.GLOBAL, pattern.ALIBI)] * len(modules)
