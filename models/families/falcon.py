"""Falcon (7B/40B/180B: rotary, multi-query or grouped keys): its attention module bypasses AttentionInterface."""

from __future__ import annotations

from models import pattern
from models.inject import run_attention

ATTENTION = "FalconAttention"


def refuse(config) -> str | None:
    if getattr(config, "alibi", False):
        return ("Falcon with ALiBi: in transformers 5.24 its eager path adds the bias twice (in the attention and "
                "again folded into the mask) while SDPA adds it once, so there is no one stock model to reproduce")
    return None


def forward(self, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None, use_cache=False,
            output_attentions=False, position_embeddings=None, **kwargs):
    """`FalconAttention.forward` (rotary path) with the scores, softmax and values computed by attnscope."""
    from transformers.models.falcon.modeling_falcon import apply_rotary_pos_emb

    num_kv_heads = self.num_heads if self.new_decoder_architecture else self.num_kv_heads
    query, key, value = self._split_heads(self.query_key_value(hidden_states))
    batch_size, query_length, _, _ = query.shape
    query = query.transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
    key = key.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
    value = value.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    out, probs = run_attention(self, query, key, value, attention_mask, self.inv_norm_factor)
    return self.dense(out.transpose(1, 2).reshape(batch_size, query_length, self.num_heads * self.head_dim)), probs


def describe(cfg, modules, kind) -> list[str]:
    return [pattern.GLOBAL] * len(modules)
