"""Collects what one traced forward pass produced, layer by layer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kernels.core import AttnOut
from kernels.maps import MapsSink
from models.trace import array_key

DENSE_LIMIT = 1024  # above this many tokens a trace keeps no N×N probabilities
POOLED = 256  # side of the pooled maps kept for long inputs


class Recorder:
    """Per layer: probs (dense inputs) or pooled maps (long inputs), LSE, row statistics, q and k when asked."""

    def __init__(self, dense_limit: int = DENSE_LIMIT, keep_qk: bool = False, pooled: int = POOLED,
                 on_layer: Callable[[int], None] | None = None):
        self.dense_limit = dense_limit
        self.on_layer = on_layer  # called with the number of layers recorded so far, after each layer
        self.keep_qk = keep_qk
        self.pooled = pooled
        self.arrays: dict[str, np.ndarray] = {}
        self.empty_rows = 0
        self.recorded = 0
        self._maps: dict[int, MapsSink] = {}

    def wants_probs(self, n: int) -> bool:
        return n <= self.dense_limit

    def sinks(self, layer: int, ctx, q: torch.Tensor, k: torch.Tensor) -> tuple:
        B, H, N, _ = q.shape
        pooled = None if self.wants_probs(N) else self.pooled
        self._maps[layer] = MapsSink(B, H, N, k.shape[2], ctx, pooled=pooled, device=q.device)
        return (self._maps[layer],)

    def record(self, layer: int, res: AttnOut, q: torch.Tensor, k: torch.Tensor, scale: float, native=None) -> None:
        """Keep batch item 0 of one layer; q and k are after rotary embedding, heads expanded.

        native: the layer's kernels.native.NativeAttention; its soft cap, key bias and learned sink
        logits are kept (and a pair bias with q and k) so exact tiles can be recomputed."""
        def put(name: str, value) -> None:
            self.arrays[array_key(layer, name)] = value

        put("scale", np.float32(scale))  # the model's own q·k scale, to recompute scores
        if native is not None:
            if native.softcap is not None:
                put("softcap", np.float32(native.softcap))
            for name in ("key_bias", "sink_logits") + (("pair_bias",) if self.keep_qk else ()):
                value = getattr(native, name)
                if value is not None:
                    put(name, _np(value[0] if value.dim() > 1 else value))
        if res.probs is not None:
            put("probs", _np(res.probs[0]))
        if res.lse is not None:  # approximations without a softmax have no log-sum-exp
            put("lse", _np(res.lse[0]))
        maps = self._maps.pop(layer, None)
        if maps is not None:
            for name, value in maps.stats.items():  # kernels.maps.STATS, and learned_sink for a model with sinks
                put(name, _np(value[0]))
            if maps.rows is not None:
                put("pooled", _np(maps.pooled()[0]))
        self.empty_rows += int(res.empty[0].sum())
        if self.keep_qk:
            put("q", _np(q[0]))
            put("k", _np(k[0]))
        self.recorded += 1
        if self.on_layer is not None:
            self.on_layer(self.recorded)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
