"""GPT-Neo: global and local (sliding window) layers, masked by each module's own `bias` buffer."""

from __future__ import annotations

import torch

from models import pattern
from models.inject import run_attention

ATTENTION = "GPTNeoSelfAttention"
MASK = "eager"  # combined with each module's own (max_positions²) mask buffer


def forward(self, hidden_states, attention_mask=None, layer_past=None, use_cache=False, output_attentions=False,
            **kwargs):
    """`GPTNeoSelfAttention.forward` with scores, softmax and values computed by attnscope (unscaled, as GPT-Neo)."""
    query, key, value = (self._split_heads(proj(hidden_states), self.num_heads, self.head_dim)
                         for proj in (self.q_proj, self.k_proj, self.v_proj))
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_id)
    query_length, key_length = query.size(-2), key.size(-2)
    keep = self.bias[:, :, key_length - query_length: key_length, :key_length]  # the module's causal or local mask
    if attention_mask is not None:
        keep = keep & (attention_mask > torch.finfo(attention_mask.dtype).min / 2)
    out, probs = run_attention(self, query.float(), key.float(), value, keep, 1.0)
    out = self.out_proj(self._merge_heads(out.to(value.dtype), self.num_heads, self.head_dim))
    return self.resid_dropout(out), probs


def describe(cfg, modules, kind) -> list[str]:
    return [pattern.sliding(cfg.window_size) if m.attention_type == "local" else pattern.GLOBAL for m in modules]
