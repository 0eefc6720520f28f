"""Data helpers for the `digits-vit` preset (scikit-learn's 8x8 digits).

The ViT sees a 32x32 image cut into 4x4 patches, and every source pixel is
blown up to exactly one 4x4 block, so the 8x8 patch grid *is* the original
digit: one attention token per source pixel, which keeps attention maps easy
to read.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 32
PATCH_SIZE = 4
SOURCE_SIZE = 8  # sklearn digits are 8x8
_SCALE = IMAGE_SIZE // SOURCE_SIZE  # == PATCH_SIZE: one source pixel per patch
_MEAN, _STD = 0.5, 0.5


def load_digits_split(
    seed: int = 0, test_fraction: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified split of the bundled digits, images scaled to [0, 1].

    Returns (x_train, y_train, x_test, y_test); images are float32 (n, 8, 8),
    labels int64 (n,).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # raw values are 0..16
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return x_train, y_train, x_test, y_test


def to_pixel_values(images: np.ndarray) -> torch.Tensor:
    """(n, 8, 8) in [0, 1] -> normalised (n, 1, 32, 32) tensor in [-1, 1].

    Nearest-neighbour upsampling (not bilinear) so each 4x4 patch is one
    constant source pixel.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    x = x.repeat_interleave(_SCALE, dim=1).repeat_interleave(_SCALE, dim=2)
    return ((x - _MEAN) / _STD).unsqueeze(1).contiguous()


def _to_gray_float(img: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 grayscale array in [0, 1]."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        # Transparent pixels become white paper, like a browser would show them.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("L"), np.float32) / 255.0
    if img.mode.startswith("I;16"):
        # 16-bit grayscale: convert("L") would clip, so scale explicitly.
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 1.0
        # "I" is often a widened 8- or 16-bit PNG; "F" may be anything.
        div = 1.0 if hi <= 1.0 else 255.0 if hi <= 255.0 else 65535.0 if hi <= 65535.0 else hi
        return np.clip(arr / div, 0.0, 1.0)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def preprocess_image(img: Image.Image) -> torch.Tensor:
    """Arbitrary uploaded image -> (1, 1, 32, 32) model input.

    Grayscale, box-average down to 8x8, make the ink bright on a dark
    background (as in the training data), stretch to [0, 1].
    """
    gray = Image.fromarray(_to_gray_float(img))  # float32 -> mode "F"
    small = np.asarray(gray.resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.BOX), dtype=np.float32)
    border = np.ones_like(small, dtype=bool)
    border[1:-1, 1:-1] = False
    centre = small[2:6, 2:6]
    # Training digits are light ink on dark; a typical upload is dark on light
    # paper, which shows up as a border brighter than the centre.
    if small[border].mean() > centre.mean():
        small = 1.0 - small
    lo, hi = float(small.min()), float(small.max())
    # Contrast-stretch like the dataset (background 0, strongest ink 1); a flat
    # image has no ink, so it maps to all-background.
    small = (small - lo) / (hi - lo) if hi - lo > 1e-6 else np.zeros_like(small)
    return to_pixel_values(small[None])


@lru_cache(maxsize=1)
def _test_split() -> tuple[np.ndarray, np.ndarray]:
    _, _, x_test, y_test = load_digits_split()
    return x_test, y_test


def digit_image(index: int) -> Image.Image:
    """Test-split digit `index` as a 64x64 'L' image (example input for the app)."""
    x_test, _ = _test_split()
    pixels = np.round(x_test[index] * 255.0).astype(np.uint8)
    return Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST)


def digit_label(index: int) -> int:
    """True label of test-split digit `index`."""
    _, y_test = _test_split()
    return int(y_test[index])
