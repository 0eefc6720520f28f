"""The family zoo: one tiny random-config model per family, and how to get its stock outputs.

Every window, chunk and local span is shorter than the zoo's inputs (TEXT is 16 tokens with the
minilm tokenizer; images are 4×4 patches), so each model's own mask bites.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

VOCAB = 30522  # the minilm WordPiece tokenizer the text models share
WINDOW = 4  # sliding windows and local spans, < the 16 tokens of tiny.TEXT
CHUNK = 6


@dataclass(frozen=True)
class Entry:
    name: str
    build: object  # () -> the stock model, eager, eval
    backend: str = "hf"  # hf | timm
    needs_native: bool = False  # softcap, ALiBi, relative position bias or learned sinks: the engine's `native`

    @property
    def image(self) -> bool:
        return self.backend == "timm" or self.name.startswith("hf-vision")


IDS = dict(pad_token_id=0, bos_token_id=101, eos_token_id=102)  # inside the vocabulary
SMALL = dict(**IDS, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, max_position_embeddings=64, head_dim=8)


def _hf(model_type: str, auto: str = "AutoModelForCausalLM", small: dict = SMALL, **kw):
    def build():
        import transformers as tf

        cfg = tf.AutoConfig.for_model(model_type, **{**small, **kw})
        torch.manual_seed(0)
        return _trained_look(getattr(tf, auto).from_config(cfg, attn_implementation="eager").eval())

    return build


def _hf_class(cls_name: str, config_name: str, small: dict = SMALL, **kw):
    def build():
        import transformers as tf

        cfg = getattr(tf, config_name)(**{**small, **kw})
        torch.manual_seed(0)
        return _trained_look(getattr(tf, cls_name)._from_config(cfg, attn_implementation="eager").eval())

    return build


def _trained_look(model):
    """Position biases and sink logits start at zero in a fresh model (BEiT's table would add nothing):
    give them values, as trained weights have, so the zoo checks they are honoured."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("relative_position_bias_table", "sinks")):
                p.normal_(0.0, 1.0)
    return model


ENCODER = dict(**IDS, cls_token_id=101, sep_token_id=102, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, num_labels=5)
SLIDING = dict(sliding_window=WINDOW)
TWO_TYPES = dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])

ZOO = [
    # decoders through AttentionInterface
    Entry("llama", _hf("llama")),
    Entry("mistral", _hf("mistral", **SLIDING)),
    Entry("mixtral", _hf("mixtral", num_local_experts=2, num_experts_per_tok=1, **SLIDING)),
    Entry("qwen2", _hf("qwen2", use_sliding_window=True, max_window_layers=1, **SLIDING)),
    Entry("qwen3", _hf("qwen3")),
    Entry("phi3", _hf("phi3", **SLIDING)),
    Entry("starcoder2", _hf("starcoder2", **SLIDING)),
    Entry("gemma", _hf("gemma")),
    Entry("gemma2", _hf("gemma2", attn_logit_softcapping=2.0, **TWO_TYPES), needs_native=True),
    Entry("gemma3", _hf_class("Gemma3ForCausalLM", "Gemma3TextConfig", **TWO_TYPES)),
    Entry("gpt_oss", _hf("gpt_oss", num_local_experts=2, num_experts_per_tok=1, **TWO_TYPES), needs_native=True),
    Entry("olmo2", _hf("olmo2")),
    Entry("cohere", _hf("cohere")),
    Entry("cohere2", _hf("cohere2", **TWO_TYPES)),
    Entry("smollm3", _hf("smollm3", no_rope_layers=[1, 0])),
    Entry("llama4", _hf_class("Llama4ForCausalLM", "Llama4TextConfig", attention_chunk_size=CHUNK,
                              layer_types=["chunked_attention", "full_attention"], no_rope_layers=[1, 0],
                              num_local_experts=2, intermediate_size_mlp=48)),
    Entry("phi", _hf("phi")),
    Entry("stablelm", _hf("stablelm")),
    Entry("granite", _hf("granite")),
    Entry("gpt_neox", _hf("gpt_neox")),
    Entry("gpt2", _hf("gpt2", small={}, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)),
    Entry("gptj", _hf("gptj", small={}, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                      rotary_dim=4)),
    Entry("opt", _hf("opt", small={}, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     ffn_dim=48, max_position_embeddings=64, word_embed_proj_dim=32)),
    # decoders with their own attention code: a per-instance forward (models/families/)
    Entry("bloom", _hf("bloom", small={}, vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4), needs_native=True),
    Entry("falcon", _hf("falcon", small={}, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2)),
    Entry("mpt", _hf("mpt", small={}, vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64),
          needs_native=True),
    Entry("gpt_neo", _hf("gpt_neo", small={}, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                         attention_types=[[["local", "global"], 1]], window_size=WINDOW, max_position_embeddings=64)),
    # encoders
    Entry("bert", _hf("bert", "AutoModel", small=ENCODER)),
    Entry("roberta", _hf("roberta", "AutoModel", small=ENCODER)),
    Entry("distilbert", _hf("distilbert", "AutoModel", small={}, vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                            hidden_dim=48, max_position_embeddings=64)),
    Entry("electra", _hf("electra", "AutoModel", small=ENCODER, embedding_size=32)),
    Entry("modernbert", _hf("modernbert", "AutoModelForMaskedLM", small=ENCODER, local_attention=2 * WINDOW,
                            global_attn_every_n_layers=2)),
    # vision transformers (HF)
    Entry("hf-vision-vit", _hf("vit", "AutoModelForImageClassification", small=VISION)),
    Entry("hf-vision-dinov2", _hf("dinov2", "AutoModel", small=VISION, mlp_ratio=1)),
    Entry("hf-vision-siglip", _hf("siglip_vision_model", "AutoModel", small=VISION)),  # no CLS token
    Entry("hf-vision-beit", _hf("beit", "AutoModelForImageClassification", small=VISION,
                                use_relative_position_bias=True), needs_native=True),
]


def _timm(name: str, **kw):
    def build():
        import timm

        torch.manual_seed(0)
        return _trained_look(timm.create_model(name, pretrained=False, num_classes=5, **kw).eval())

    return build


TIMM_SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
ZOO += [
    Entry("timm-vit", _timm("vit_tiny_patch16_224", **TIMM_SMALL), backend="timm"),
    Entry("timm-vit-reg", _timm("vit_small_patch14_reg4_dinov2", **TIMM_SMALL), backend="timm"),
    Entry("timm-eva02", _timm("eva02_tiny_patch14_224", **TIMM_SMALL), backend="timm"),
    Entry("timm-beit", _timm("beit_base_patch16_224", **TIMM_SMALL), backend="timm", needs_native=True),
    Entry("timm-swin", _timm("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4, embed_dim=16,
                             depths=(2, 2), num_heads=(2, 4)), backend="timm", needs_native=True),
]


def by_name(name: str) -> Entry:
    return next(e for e in ZOO if e.name == name)


def wrap(entry: Entry, stock, tokenizer):
    """attnscope's LoadedModel around a copy of the stock model (the stock one stays eager and untouched)."""
    from models import hf_adapter, timm_adapter

    model = copy.deepcopy(stock)
    if entry.backend == "timm":
        return timm_adapter.wrap(model, entry.name, "test")
    if entry.image:
        from transformers import ViTImageProcessor

        proc = ViTImageProcessor(size={"height": 32, "width": 32})
        return hf_adapter.wrap(model, entry.name, "test", image_processor=hf_adapter.hf_image_processor(proc))
    return hf_adapter.wrap(model, entry.name, "test", tokenizer=tokenizer)


def stock(lm, model, enc):
    """(output as the trace keeps it, per-layer probs (H, N, N)) of the untouched stock model."""
    return stock_timm(lm, model, enc) if lm.backend == "timm" else stock_hf(lm, model, enc)


def stock_timm(lm, model, enc):
    """timm's unfused path hands each attention module's own softmax to its `attn_drop`: captured there."""
    captured = []
    hooks = []
    for m in model.modules():
        if hasattr(m, "fused_attn") and hasattr(m, "attn_drop"):
            m.fused_attn = False
            hooks.append(m.attn_drop.register_forward_hook(lambda mod, i, o: captured.append(i[0])))
    try:
        with torch.no_grad():
            out = model(enc.inputs["x"])[0]
    finally:
        for h in hooks:
            h.remove()
    if lm.native_pattern[0].startswith(("window", "shifted")):
        captured = swin_on_grid(lm, captured)
    return out.float().numpy(), [p[0].float().numpy() for p in captured]


def swin_on_grid(lm, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Swin's per-window probabilities (windows, H, M², M²) placed on the input patch grid, each merged
    cell's weight spread evenly over its f×f patches: what attnscope records."""
    from models.families import timm_swin

    out = []
    for layer, p in enumerate(windows):
        block = timm_swin._blocks(lm.module, lm.adapter.modules)[layer]
        (h, w), f = block.input_resolution, block._attnscope_factor
        window, slot = timm_swin.window_layout(block, h, w)
        cell = timm_swin.expand(h, w, f)
        wi, si = window[cell], slot[cell]
        grid = p[wi[:, None], :, si[:, None], si[None, :]].permute(2, 0, 1) / (f * f)  # (H, L, L)
        same = wi[:, None] == wi[None, :]
        out.append((grid * same)[None])
    return out


def stock_hf(lm, stock, enc):
    """The stock eager model on the same input: (output as the trace keeps it, per-layer probs (H, N, N))."""
    with torch.no_grad():
        out = stock(**enc.inputs, output_attentions=True)
    if lm.kind == "causal":
        output = out.logits[0, -1:]
    elif lm.output_kind in ("logits", "class_scores"):
        output = out.logits[0]
    else:
        output = out.last_hidden_state[0]
    return output.float().numpy(), [a[0].float().numpy() for a in out.attentions]
