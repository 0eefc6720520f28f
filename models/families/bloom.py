"""BLOOM: ALiBi, added by the attention module itself (`alibi.baddbmm`), outside AttentionInterface."""

from __future__ import annotations

from kernels.native import NativeAttention
from models import pattern
from models.inject import run_attention

ATTENTION = "BloomAttention"


def forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
            output_attentions=False, **kwargs):
    """`BloomAttention.forward` with the scores, softmax and values computed by attnscope."""
    from transformers.models.bloom.modeling_bloom import dropout_add

    batch_size, q_length, _ = hidden_states.shape
    query, key, value = self._reshape(self.query_key_value(hidden_states))
    if layer_past is not None:
        key, value = layer_past.update(key, value, self.layer_idx)
    # scores = beta·alibi + inv_norm_factor·q·kᵀ: ALiBi is one bias per (head, key), a closed form in O(N)
    key_bias = (self.beta * alibi).view(batch_size, self.num_heads, -1).float()
    out, probs = run_attention(self, query, key, value, attention_mask, self.inv_norm_factor,
                               NativeAttention(key_bias=key_bias))
    output = self.dense(self._merge_heads(out.flatten(0, 1)))
    return dropout_add(output, residual, self.hidden_dropout, self.training), probs


def describe(cfg, modules, kind) -> list[str]:
    return [pattern.join(pattern.GLOBAL, pattern.ALIBI)] * len(modules)
