"""Reading user inputs from files: text (UTF-8 checked) and images (decoded and checked)."""

from __future__ import annotations

from pathlib import Path

from models.loaded import InputError

MAX_TEXT_BYTES = 2_000_000
MAX_IMAGE_PIXELS = 64_000_000  # larger images are refused before they are decoded (decompression bombs)


def read_text_file(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"text file {path} does not exist")
    data = path.read_bytes()
    if len(data) > MAX_TEXT_BYTES:
        raise InputError(f"text file {path} is {len(data):,} bytes; the limit is {MAX_TEXT_BYTES:,}")
    return decode_text(data, str(path))


def check_text(text: str, name: str = "the text") -> str:
    """An empty text, or a str that cannot be UTF-8 (lone surrogates: how Python hands over undecodable argv
    bytes), is refused."""
    if not text.strip():
        raise InputError(f"{name} is empty; type or upload some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 (bad character at {exc.start}); give UTF-8 text") from None
    return text


def decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8") from None


def read_image(path: Path):
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    return open_image(path.read_bytes(), path.name), path.name


def open_image(data: bytes, name: str):
    """Decode image bytes fully (so truncated files fail here, not in the model)."""
    import io

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name} is not a readable image ({type(exc).__name__}); upload a PNG or JPEG") from None
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name} is {img.width}×{img.height} pixels; the limit is {MAX_IMAGE_PIXELS:,} pixels")
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{name} is not a readable image ({type(exc).__name__}); upload a PNG or JPEG") from None
    return img
