"""Calibration passes for variants that learn per-head thresholds from an input (top_theta, dam).

A variant with `needs_calibration` gets a full-attention pass over a calibration input; its
`calibrate(q0, q1, probs, scores, ctx)` returns partial sums per query chunk, added up here per
layer. Results are cached per (model, variant parameters, calibration input).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import torch

from kernels.variants import Variant
from models.inject import FULL, CallPlan, plan
from models.loaded import Encoded, LoadedModel

CALIBRATION_TEXT = Path(__file__).resolve().parent / "data" / "calibration.txt"
_CACHE: dict[tuple, dict[int, dict[str, torch.Tensor]]] = {}
_LOCK = threading.Lock()


def default_calibration(lm: LoadedModel) -> Encoded:
    """A shipped text for language models; for ViTs a digit (digits-vit) or a bundled photo."""
    if lm.kind != "vit":
        return lm.encode_text(CALIBRATION_TEXT.read_text())
    if lm.model_id == "digits-vit":
        from models.digits_data import digit_image

        return lm.encode_image(digit_image(0))
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return lm.encode_image(Image.fromarray(load_sample_image("china.jpg")))


class _StatsRecorder:
    """A recorder that only sums the variant's calibration statistics per layer."""

    def __init__(self, variant: Variant):
        self.variant = variant
        self.stats: dict[int, dict[str, torch.Tensor]] = {}

    def wants_probs(self, n: int) -> bool:
        return False

    def sinks(self, layer, ctx, q, k):
        def add(chunk):  # calibrate() reads whole rows: every key, −inf where masked
            p, s = chunk.wide(chunk.p, 0.0), chunk.wide(chunk.scores, float("-inf"))
            acc = self.stats.setdefault(layer, {})
            for name, value in self.variant.calibrate(chunk.q0, chunk.q1, p, s, ctx).items():
                acc[name] = acc[name] + value if name in acc else value.clone()

        return (add,)

    def record(self, layer, res, q, k, scale, native=None) -> None:
        pass


def calibrate(lm: LoadedModel, variant: Variant, enc: Encoded) -> dict[int, dict[str, torch.Tensor]]:
    # A model the caller holds (the Python API) may be trained between calls, and a freed object's id
    # reused by another model: its calibration is never cached.
    cached = lm.source != "object"
    key = (lm.model_id, id(lm.module), variant.spec(), _digest(enc))
    with _LOCK:
        if cached and key in _CACHE:
            return _CACHE[key]
    rec = _StatsRecorder(variant)
    with plan(CallPlan(variant=FULL, ctx=enc.ctx, recorder=rec)):
        lm.forward(enc)
    if cached:
        with _LOCK:
            _CACHE[key] = rec.stats
    return rec.stats


def _digest(enc: Encoded) -> str:
    h = hashlib.sha256()
    for name in sorted(enc.inputs):
        h.update(name.encode())
        h.update(enc.inputs[name].detach().cpu().numpy().tobytes())
    return h.hexdigest()
