"""What a model itself does to one layer's attention, beyond softmax(q·kᵀ·scale) under its mask.

The models layer fills a `NativeAttention` per attention call from what the model hands its
attention function (transformers' `softcap`, `s_aux`, biases) or from the module's own tensors
(BLOOM's ALiBi, BEiT's relative position bias); every attention path honours it exactly, and a
variant is applied on top of it. The model's mask (causal, padding, sliding window, chunked,
bidirectional-local) is not here: it arrives as the `model_mask` argument (see `ModelMaskLike`).

Order of operations, as the models compute it:

    s = q·kᵀ·scale
    s = softcap·tanh(s / softcap)          when softcap is set            (Gemma 2, Grok)
    s = s + key_bias[b, h, j]              when key_bias is set           (ALiBi as BLOOM, Falcon, MPT add it)
    s = s + pair_bias[b, h, i, j]          when pair_bias is set          (BEiT / Swin relative position bias)
    s = variant's score_mod(s), then the model mask AND the variant's mask
    p = exp(s − lse),  lse = log(Σ_j exp(s_ij) + exp(sink_logits[h]))    (GPT-OSS learned sinks, `s_aux`)

So with learned sinks a row's probabilities sum to 1 − exp(sink − lse): the mass the sink absorbed,
which the recorder keeps as the row statistic `learned_sink`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True, eq=False)
class NativeAttention:
    """The model's own score modifiers for one attention call; None fields do nothing.

    softcap: float > 0.
    key_bias: (B or 1, H, Nk) float, added to every score of key j (a closed form per key: O(N), never N×N).
    pair_bias: (B or 1, H, N, Nk) float, added to score (i, j). Only for short inputs (ViTs' relative
        position biases, N in the hundreds): it is N×N by nature.
    sink_logits: (H,) float, one learned sink logit per query head; joins each row's normaliser and
        carries no value.
    """

    softcap: float | None = None
    key_bias: torch.Tensor | None = None
    pair_bias: torch.Tensor | None = None
    sink_logits: torch.Tensor | None = None

    @property
    def is_plain(self) -> bool:
        return self.softcap is None and self.key_bias is None and self.pair_bias is None and self.sink_logits is None


PLAIN = NativeAttention()


class ModelMaskLike(Protocol):
    """The model's own mask as the attention paths receive it (`model_mask=`), evaluated lazily.

    One object stands for one mask of one forward pass: transformers builds it once per layer type and
    hands the same object to every layer of that type, so anything derived from it (a block plan)
    may be cached on the object's identity for the pass.
    """

    def rows(self, q0: int, q1: int) -> torch.Tensor | None:
        """bool (B, 1, q1 − q0, Nk): True where query i may see key j; None when every key is kept."""

    def redundant_for(self, ctx) -> bool:
        """True when the mask adds nothing to what the TokenContext already says (plain causal, no mask)."""
