"""Input limits: text longer than the model takes is refused with the fix, or truncated when asked."""

from __future__ import annotations

import pytest
from tiny import tiny_text_model, wrap_text

from models.loaded import InputError
from models.tracer import trace


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    return wrap_text(tiny_text_model("gpt2"), tokenizer)  # n_positions=128


def test_too_long_text_names_the_fix(gpt2):
    text = "word " * 200
    with pytest.raises(InputError, match=r"has 202 tokens but tiny-gpt2 takes at most 128.*--max-tokens 128"):
        trace(gpt2, text=text)


def test_truncation_says_how_many_were_dropped(gpt2):
    tr = trace(gpt2, text="word " * 200, max_tokens=128)
    assert tr.n == 128 and any("74 dropped" in note for note in tr.notes)
    short = trace(gpt2, text="word " * 200, max_tokens=50)
    assert short.n == 50 and short.probs(0).shape == (4, 50, 50)
