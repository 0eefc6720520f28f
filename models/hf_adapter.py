"""transformers models: text encoders, decoders and ViTs, run through AttentionInterface."""

from __future__ import annotations

import inspect

import torch

from kernels.context import TokenContext
from models import families, pattern
from models.inject import IMPL, register
from models.loaded import Encoded, InputError, LoadedModel, ModelError, resize_note, to_display

VISION_TYPES = {"vit", "deit", "dinov2", "dinov2_with_registers", "vit_msn", "vit_mae", "beit", "data2vec-vision"}


def uses_attention_interface(module: torch.nn.Module) -> bool:
    """Whether the module's own forward picks its attention function from transformers' AttentionInterface."""
    code = getattr(inspect.unwrap(type(module).forward), "__code__", None)
    return code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names


def self_attention_modules(model: torch.nn.Module, family=None) -> list[torch.nn.Module]:
    """The modules attnscope runs, in model order: a hooked family's attention class, else every self-attention
    module that calls AttentionInterface (not the `is_causal` + `scaling` attributes: ModernBERT has no `scaling`)."""
    if family is not None:
        return [m for m in model.modules() if type(m).__name__ == family.ATTENTION]
    return [
        m for m in model.modules()
        if uses_attention_interface(m) and not getattr(m, "is_cross_attention", False)
        and "Cross" not in type(m).__name__
    ]


def kind_of(config, model=None) -> str:
    if config.model_type in VISION_TYPES or (hasattr(config, "patch_size") and hasattr(config, "image_size")):
        return "vit"
    archs = list(config.architectures or []) + ([type(model).__name__] if model is not None else [])
    if getattr(config, "is_decoder", False) or _decoder_only(config.model_type) or any(
        a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs
    ):
        return "causal"
    return "bidirectional"


def _decoder_only(model_type: str) -> bool:
    """A family transformers has only causal language models of: its base model (LlamaModel, BloomModel,
    built without `architectures`) is causal too. BERT-likes have both heads; their `is_decoder` decides."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def model_class(config, kind: str):
    import transformers as tf

    archs = config.architectures or []
    if kind == "causal" and (not archs or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        return tf.AutoModelForCausalLM  # a folder saved from a base decoder (LlamaModel) loads as one: AutoModel
    if kind == "vit":
        return tf.AutoModelForImageClassification if any("ForImageClassification" in a for a in archs) else tf.AutoModel
    if any(a.endswith("ForMaskedLM") for a in archs):
        return tf.AutoModelForMaskedLM
    return tf.AutoModel


# Families whose attention goes through AttentionInterface but whose calls are not one attention over
# the input's tokens per layer.
REFUSED = {
    "swin": "its attention runs on window batches; trace Swin with timm, which attnscope hooks on the patch grid",
    "albert": "its layers share one attention module, run once per layer",
    "vit_mae": "it drops a random 75 % of the patches before the encoder",
}


def check_config(config) -> None:
    """Refuse, from the config alone (before any weights load), what attnscope does not trace."""
    family = families.hf_family(config.model_type)
    why = (
        REFUSED.get(config.model_type)
        or (getattr(config, "is_encoder_decoder", False) and "encoder–decoder models (cross-attention) are not traced")
        or (hasattr(family, "refuse") and family.refuse(config))
    )
    if why:
        raise ModelError(families.refusal(config.model_type, why))


def wrap(model, model_id: str, source: str, *, tokenizer=None, image_processor=None, revision=None) -> LoadedModel:
    """Switch a loaded transformers model to our attention and describe it.

    Everything it changes is an instance attribute of the model's modules and configs, which
    models.attach.restored puts back for a model the user holds."""
    register()
    config = model.config
    check_config(config)
    family = families.hf_family(config.model_type)
    modules = self_attention_modules(model, family)
    families.check_all_hooked(model, modules, config.model_type)
    if not modules:
        raise ModelError(families.refusal(config.model_type, "it has no attention layers attnscope can hook; pick a "
                                                             "transformer model"))
    kind = kind_of(config, model)
    # our mask interface hands every layer a lazy mask; a family whose model code reads its mask as a tensor
    # (MASK = "eager") gets transformers' eager mask
    set_attn_implementation(model, getattr(family, "MASK", IMPL))
    families.install(model, family, modules)
    model.eval()
    cfg = getattr(config, "text_config", None) or config
    labels = None
    if kind == "vit" and getattr(config, "id2label", None) and hasattr(model, "classifier"):
        labels = [config.id2label[i] for i in range(len(config.id2label))]
    output_kind = {"vit": "class_scores" if labels else "hidden"}.get(kind)
    if output_kind is None:  # a language model with its head gives logits; a base model (LlamaModel, BertModel) states
        head = model.get_output_embeddings() is not None or hasattr(model, "cls") or "MaskedLM" in type(model).__name__
        output_kind = "logits" if head else "hidden"
    return LoadedModel(
        model_id=model_id,
        source=source,
        backend="hf",
        kind=kind,
        module=model,
        n_layers=len(modules),
        n_heads=cfg.num_attention_heads,
        revision=revision,
        labels=labels,
        max_tokens=getattr(cfg, "max_position_embeddings", None),
        output_kind=output_kind,
        adapter=HFAdapter(tokenizer, image_processor),
        native_pattern=(family.describe if family is not None else hf_pattern)(cfg, modules, kind),
    )


def set_attn_implementation(model, implementation: str) -> None:
    """transformers' own switch where the model supports it; the families that bypass AttentionInterface
    still build their mask from the config's implementation, so theirs is set directly."""
    if model._can_set_attn_implementation():
        model.set_attn_implementation(implementation)
        return
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            config._attn_implementation_internal = implementation


def hf_pattern(cfg, modules: list[torch.nn.Module], kind: str) -> list[str]:
    """Per attention module, what the model itself does, from the config it builds its masks from."""
    types_ = getattr(cfg, "layer_types", None)
    default = "sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"
    out = []
    for i, m in enumerate(modules):
        idx = getattr(m, "layer_idx", None)
        layer_type = types_[i if idx is None else idx] if types_ else default
        if layer_type == "sliding_attention":
            phrase = pattern.sliding(cfg.sliding_window, causal=kind == "causal")
        elif layer_type == "chunked_attention":
            phrase = pattern.chunked(cfg.attention_chunk_size)
        else:
            phrase = pattern.GLOBAL
        out.append(pattern.join(
            phrase,
            getattr(cfg, "attn_logit_softcapping", None) and pattern.softcap(cfg.attn_logit_softcapping),
            isinstance(getattr(m, "sinks", None), torch.Tensor) and pattern.LEARNED_SINKS,
            (getattr(cfg, "use_relative_position_bias", False) or getattr(cfg, "use_shared_relative_position_bias",
                                                                          False)) and pattern.RELATIVE_BIAS,
        ))
    return out


class HFAdapter:
    def __init__(self, tokenizer, image_processor):
        self.tokenizer = tokenizer
        self.image_processor = image_processor  # PIL image -> (pixel_values, rgb array, notes)

    def encode_text(self, lm: LoadedModel, text: str) -> Encoded:
        if not text or not text.strip():
            raise InputError("the text is empty; type or upload some text")
        enc = self.tokenizer(text, return_tensors="pt")
        ids = enc["input_ids"][0]
        special = set(self.tokenizer.all_special_ids or [])
        ctx = TokenContext.sequence(
            len(ids),
            causal=lm.kind == "causal",
            n_layers=lm.n_layers,
            special=torch.tensor([int(i) in special for i in ids], dtype=torch.bool),
        )
        tokens = [_readable(t) for t in self.tokenizer.convert_ids_to_tokens(ids.tolist())]
        inputs = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return Encoded(inputs=inputs, tokens=tokens, token_ids=ids.tolist(), ctx=ctx)

    def encode_image(self, lm: LoadedModel, image) -> Encoded:
        pixel_values, rgb, notes = self.image_processor(image)
        notes = [*notes, *resize_note(image, pixel_values)]
        config = lm.module.config
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        has_cls = any(getattr(m, name, None) is not None for m in lm.module.modules()
                      for name in ("cls_token", "class_embedding"))  # SigLIP and I-JEPA have none
        n_prefix = int(has_cls) + int(getattr(config, "num_register_tokens", 0) or 0) + int(config.model_type == "deit")
        ctx = TokenContext.vit(grid, n_prefix=n_prefix, n_layers=lm.n_layers)
        tokens = _vit_tokens(n_prefix, grid)
        return Encoded(
            inputs={"pixel_values": pixel_values.to(lm.device)},
            tokens=tokens,
            token_ids=list(range(len(tokens))),
            ctx=ctx,
            notes=notes,
            image=rgb,
        )

    def forward(self, lm: LoadedModel, enc: Encoded) -> torch.Tensor:
        if lm.kind == "causal" and lm.output_kind == "logits":  # the last position: 8k tokens' logits are 1.6 GB
            return lm.module(**enc.inputs, logits_to_keep=1).logits[0].float()
        out = lm.module(**enc.inputs)
        if lm.kind == "vit":
            return (out.logits if lm.labels else out.last_hidden_state)[0].float()
        if lm.output_kind == "logits":
            return out.logits[0].float()
        return out.last_hidden_state[0].float()


def _vit_tokens(n_prefix: int, grid: tuple[int, int]) -> list[str]:
    names = ["CLS", "DIST"] if n_prefix == 2 else ["CLS"] + [f"REG{i}" for i in range(n_prefix - 1)]
    return names[:n_prefix] + [f"({r},{c})" for r in range(grid[0]) for c in range(grid[1])]


def _readable(token: str) -> str:
    """Byte-level BPE marks spaces and newlines with Ġ/Ċ; show them as a reader would."""
    return token.replace("Ġ", " ").replace("Ċ", "\\n").replace("▁", " ")


def hf_image_processor(processor):
    """Wrap a transformers image processor as PIL -> (pixel_values, display image, notes)."""

    def process(image):
        pixel_values = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return pixel_values, to_display(pixel_values, processor.image_mean, processor.image_std), []

    return process
