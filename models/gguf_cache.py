"""Cache of dequantized GGUF weights as safetensors, so only the first load pays ~20 s."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _dir(path: Path) -> Path:
    from models.registry import cache_dir

    return cache_dir() / "gguf" / f"{path.stem}-{_key(path)}"


def cached_dir(path: Path) -> Path | None:
    d = _dir(path)
    return d if (d / "model.safetensors").is_file() and (d / "config.json").is_file() else None


def write_cache(path: Path, model, tokenizer) -> Path:
    """Write config, weights and tokenizer to a temporary folder, then rename it into place."""
    from safetensors.torch import save_model

    final = _dir(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        config = model.config
        if hasattr(config, "quantization_config"):  # the weights are plain floats once dequantized
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, final) if not final.exists() else shutil.rmtree(tmp)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a read-only cache only costs speed
    return final
