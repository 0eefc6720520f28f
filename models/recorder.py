"""Collects what one traced forward pass produced, layer by layer."""

from __future__ import annotations

import numpy as np
import torch

from kernels.reference import AttnOut

DENSE_LIMIT = 1024  # above this many tokens a trace keeps no N×N probabilities


class Recorder:
    def __init__(self, dense_limit: int = DENSE_LIMIT, keep_qk: bool = False):
        self.dense_limit = dense_limit
        self.keep_qk = keep_qk
        self.arrays: dict[str, np.ndarray] = {}
        self.empty_rows = 0

    def wants_probs(self, n: int) -> bool:
        return n <= self.dense_limit

    def sinks(self, layer: int, ctx) -> tuple:
        return ()

    def record(self, layer: int, res: AttnOut, q: torch.Tensor, k: torch.Tensor) -> None:
        """Keep batch item 0 of one layer; q and k are after rotary embedding, heads expanded."""
        put = self.arrays.__setitem__
        if res.probs is not None:
            put(f"L{layer}_probs", _np(res.probs[0]))
        if res.lse is not None:  # approximations without a softmax have no log-sum-exp
            put(f"L{layer}_lse", _np(res.lse[0]))
        self.empty_rows += int(res.empty[0].sum())
        if self.keep_qk:
            put(f"L{layer}_q", _np(q[0]))
            put(f"L{layer}_k", _np(k[0]))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()
