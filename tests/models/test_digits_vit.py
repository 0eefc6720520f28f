"""The embedded digits-vit preset: committed checkpoint quality and its preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.digits_data import (
    IMAGE_SIZE,
    PATCH_SIZE,
    digit_image,
    digit_label,
    load_digits_split,
    preprocess_image,
    to_pixel_values,
)

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "digits_vit"


@pytest.fixture(scope="module")
def model():
    from transformers import ViTForImageClassification

    m = ViTForImageClassification.from_pretrained(CHECKPOINT, attn_implementation="eager", local_files_only=True)
    return m.eval()


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def test_split_is_fixed_and_scaled(split):
    x_train, y_train, x_test, y_test = split
    assert x_train.shape == (1347, 8, 8) and x_test.shape == (450, 8, 8)
    assert x_train.dtype == np.float32 and 0.0 <= x_test.min() and x_test.max() == 1.0
    assert np.bincount(y_test).min() >= 43  # stratified: each class 43..46 times
    np.testing.assert_array_equal(load_digits_split()[3], y_test)


def test_checkpoint_is_accurate_on_held_out_split(model, split):
    _, _, x_test, y_test = split
    with torch.no_grad():
        out = model(pixel_values=to_pixel_values(x_test[:1]), output_attentions=True)
        logits = model(pixel_values=to_pixel_values(x_test)).logits
    acc = float((logits.argmax(-1).numpy() == y_test).mean())
    assert acc >= 0.95, acc
    # One token per source pixel plus CLS, 4 heads, 4..6 layers.
    grid = (IMAGE_SIZE // PATCH_SIZE) ** 2
    assert 4 <= len(out.attentions) <= 6
    assert out.attentions[0].shape == (1, 4, grid + 1, grid + 1)


def test_checkpoint_is_small():
    assert (CHECKPOINT / "config.json").is_file()
    assert (CHECKPOINT / "model.safetensors").stat().st_size < 5 * 1024 * 1024


def test_to_pixel_values_shape_range_and_constant_patches(split):
    x = split[2][:5]
    px = to_pixel_values(x)
    assert px.shape == (5, 1, IMAGE_SIZE, IMAGE_SIZE) and px.dtype == torch.float32
    assert px.min() >= -1.0 and px.max() <= 1.0
    patches = px.unfold(2, PATCH_SIZE, PATCH_SIZE).unfold(3, PATCH_SIZE, PATCH_SIZE)  # (n, 1, 8, 8, 4, 4)
    assert torch.equal(patches.amax((-2, -1)), patches.amin((-2, -1)))
    np.testing.assert_allclose(patches[..., 0, 0].squeeze(1).numpy(), x * 2 - 1, atol=1e-6)


def _ink_mask(index: int) -> np.ndarray:
    return load_digits_split()[2][index] > 0.5


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_preprocess_image_modes(mode):
    img = digit_image(0)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    px = preprocess_image(img)
    assert px.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE) and px.dtype == torch.float32
    assert px.min() >= -1.0 and px.max() <= 1.0
    small = px[0, 0, ::PATCH_SIZE, ::PATCH_SIZE].numpy()
    ink = _ink_mask(0)
    assert small[ink].mean() > 0.5 > small[~ink].mean()  # ink stays bright, background dark


def test_digit_image_round_trips(model):
    x_test = load_digits_split()[2]
    for i in range(8):
        img = digit_image(i)
        assert img.mode == "L" and img.size == (64, 64)
        px = preprocess_image(img)
        # Only 8-bit quantisation and the contrast stretch separate the two.
        stretched = x_test[i] / x_test[i].max()
        np.testing.assert_allclose(px[0, 0, ::PATCH_SIZE, ::PATCH_SIZE].numpy(), stretched * 2 - 1, atol=0.01)
    with torch.no_grad():
        preds = model(pixel_values=torch.cat([preprocess_image(digit_image(i)) for i in range(8)])).logits.argmax(-1)
    assert sum(int(p) == digit_label(i) for i, p in enumerate(preds)) >= 7


def test_dark_on_light_upload_is_inverted():
    # Black ink on white paper, larger than the model input, as a photo or drawing would be.
    light = 255 - np.asarray(digit_image(5))
    for img in (Image.fromarray(light), Image.fromarray(light).convert("RGB")):
        small = preprocess_image(img)[0, 0, ::PATCH_SIZE, ::PATCH_SIZE].numpy()
        ink = _ink_mask(5)
        assert small[ink].mean() > 0.5 > small[~ink].mean()
        np.testing.assert_allclose(small, preprocess_image(digit_image(5))[0, 0, ::PATCH_SIZE, ::PATCH_SIZE], atol=0.01)


def test_transparent_background_becomes_paper():
    # Black ink on a transparent canvas (a typical drawing-app export): composited on white, then inverted.
    alpha = np.asarray(digit_image(1))
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    small = preprocess_image(Image.fromarray(rgba))[0, 0, ::PATCH_SIZE, ::PATCH_SIZE].numpy()
    ink = _ink_mask(1)
    assert small[ink].mean() > 0.5 > small[~ink].mean()


def test_blank_image_is_all_background():
    px = preprocess_image(Image.new("RGB", (20, 20), "white"))
    assert torch.all(px == -1.0)
