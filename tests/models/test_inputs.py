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
    assert short.n == 50 and short.attention(0).shape == (4, 50, 50)


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_max_tokens_below_one_is_refused(gpt2, max_tokens):
    with pytest.raises(InputError, match=f"must be at least 1, got {max_tokens}"):
        trace(gpt2, text="word " * 10, max_tokens=max_tokens)


def test_images_of_any_mode_are_taken_and_resizing_is_said(tmp_path):
    import io

    from tiny import sample_image, tiny_vit, wrap_vit

    from models.inputs import open_image

    lm = wrap_vit(tiny_vit())
    base = sample_image((40, 30))
    for mode in ("RGB", "L", "RGBA", "P", "I;16"):
        buf = io.BytesIO()
        (base.convert("L").convert(mode) if mode == "I;16" else base.convert(mode)).save(buf, format="PNG")
        tr = trace(lm, image=open_image(buf.getvalue(), f"x-{mode}.png"))
        assert tr.image.shape == (32, 32, 3)
        assert "resized from 40×30 to 32×32" in " ".join(tr.notes)


def test_huge_and_broken_images_are_refused():
    import io

    from PIL import Image

    from models.inputs import open_image

    buf = io.BytesIO()
    Image.new("1", (10_000, 7_000)).save(buf, format="PNG")  # 70 M pixels, a few kB on disk
    with pytest.raises(InputError, match="the limit is 64,000,000 pixels"):
        open_image(buf.getvalue(), "huge.png")
    with pytest.raises(InputError, match="not a readable image"):
        open_image(b"GIF89a\x00\x00", "broken.gif")
    with pytest.raises(InputError, match="not a readable image"):
        open_image(b"%PDF-1.4 not an image", "doc.pdf")
