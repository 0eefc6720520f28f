"""Variants that calibrate on an input (top_theta, dam): the pass runs once and feeds the variant."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import TEXT, tiny_text_model, wrap_text

from kernels.variants import VariantError
from models import calibrate as calib_mod
from models.tracer import trace

CALIB = {"text": TEXT + " and the lazy dog sleeps in the warm afternoon sun by the river"}


@pytest.fixture()
def llama(tokenizer):
    return wrap_text(tiny_text_model("llama-gqa"), tokenizer)


def test_top_theta_calibrates_once_and_prunes(llama, monkeypatch):
    runs = []
    real = calib_mod._StatsRecorder.__init__
    monkeypatch.setattr(calib_mod._StatsRecorder, "__init__", lambda self, v: (runs.append(v), real(self, v))[1])
    full = trace(llama, text=TEXT)
    a = trace(llama, text=TEXT, variant="top_theta:k=3,compensate=false", calibration=CALIB)
    b = trace(llama, text=TEXT, variant="top_theta:k=3,compensate=false", calibration=CALIB)
    assert len(runs) == 1  # cached per (model, variant, calibration input)
    np.testing.assert_array_equal(a.attention(0), b.attention(0))
    assert (a.attention(1) == 0).sum() > (full.attention(1) == 0).sum()  # scores under θ were dropped
    np.testing.assert_allclose(a.attention(1).sum(-1), 1, atol=1e-5)


def test_a_model_the_caller_holds_is_calibrated_afresh_each_call(tokenizer, monkeypatch):
    """It may be trained between calls (and a freed model's id reused), so its thresholds are never cached."""
    import attnscope

    runs = []
    real = calib_mod._StatsRecorder.__init__
    monkeypatch.setattr(calib_mod._StatsRecorder, "__init__", lambda self, v: (runs.append(v), real(self, v))[1])
    model = tiny_text_model("llama-gqa")
    for _ in range(2):
        attnscope.trace(model, tokenizer=tokenizer, text=TEXT, variant="top_theta:k=3")
    assert len(runs) == 2


def test_dam_refuses_an_input_longer_than_its_calibration(llama):
    short = {"text": "a short calibration"}
    with pytest.raises(VariantError, match="dam"):
        trace(llama, text=TEXT, variant="dam", calibration=short)
    tr = trace(llama, text="the quick fox", variant="dam:tau=0.3", calibration=CALIB)
    assert tr.variant.startswith("dam")


@pytest.mark.slow
def test_top_theta_on_smollm_with_the_shipped_calibration_text(smollm):
    tr = trace(smollm, text=TEXT, variant="top_theta:k=8")
    full = trace(smollm, text=TEXT)
    assert not np.allclose(tr.attention(10), full.attention(10))
    np.testing.assert_allclose(tr.attention(10).sum(-1), 1, atol=1e-4)
