"""Example inputs that ship with the installed packages (no network)."""

from __future__ import annotations

from PIL import Image

TEXT_EXAMPLES = {
    "Sentence": "The quick brown fox jumps over the lazy dog because the dog was sleeping in the sun.",
    "Repeated phrase": "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly "
    "normal. Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal.",
    "Code": "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
}

PHOTOS = ("china.jpg", "flower.jpg")  # scikit-learn's bundled sample photos


def image_examples() -> list[str]:
    return [f"digit #{i}" for i in range(8)] + [f"photo {p}" for p in PHOTOS]


def load_image_example(name: str) -> Image.Image:
    if name.startswith("digit #"):
        from models.digits_data import digit_image

        return digit_image(int(name.removeprefix("digit #")))
    if name.startswith("photo "):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name.removeprefix("photo ")))
    raise ValueError(f"unknown example {name!r}")
