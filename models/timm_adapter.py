"""timm ViTs: a per-instance forward on each attention module routes attention through attnscope."""

from __future__ import annotations

import types

import torch

from kernels.context import TokenContext
from models.hf_adapter import _vit_tokens
from models.inject import _DenseMask, run_attention
from models.loaded import Encoded, LoadedModel, ModelError, resize_note, to_display


def _attention_forward(self, x, attn_mask=None, is_causal=False, **_):
    """timm `Attention.forward` with the score/softmax/value product handed to attnscope."""
    B, N, _ = x.shape
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    mask = None if attn_mask is None else _DenseMask(attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4)
    out, _ = run_attention(self, q, k, v, mask, self.scale)
    x = self.norm(out.transpose(1, 2).reshape(B, N, -1))
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def wrap(model, model_id: str, source: str) -> LoadedModel:
    from timm.layers import Attention

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ModelError(f"{model_id} is not a timm VisionTransformer; attnscope supports timm ViTs")
    n_layers = 0
    for block in blocks:
        attn = getattr(block, "attn", None)
        if type(attn) is not Attention:  # rope / other attention classes compute differently
            raise ModelError(f"{model_id}: attention class {type(attn).__name__} is not supported yet")
        attn._attnscope_layer = n_layers
        attn.forward = types.MethodType(_attention_forward, attn)
        n_layers += 1
    model.eval()
    labels = None
    if getattr(model, "num_classes", 0):
        labels = [str(i) for i in range(model.num_classes)]
    return LoadedModel(
        model_id=model_id,
        source=source,
        backend="timm",
        kind="vit",
        module=model,
        n_layers=n_layers,
        n_heads=blocks[0].attn.num_heads,
        labels=labels,
        output_kind="class_scores" if labels else "hidden",
        adapter=TimmAdapter(model),
    )


class TimmAdapter:
    def __init__(self, model):
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        if not getattr(model, "dynamic_img_size", False):  # the model's own size wins over its pretrained_cfg
            cfg["input_size"] = (cfg["input_size"][0], *model.patch_embed.img_size)
        self.transform = timm.data.create_transform(**cfg)
        self.mean, self.std = cfg["mean"], cfg["std"]

    def encode_image(self, lm: LoadedModel, image) -> Encoded:
        rgb = image.convert("RGB")
        pixel_values = self.transform(rgb)[None]
        model = lm.module
        patch = model.patch_embed.patch_size
        grid = (pixel_values.shape[-2] // patch[0], pixel_values.shape[-1] // patch[1])
        n_prefix = model.num_prefix_tokens
        return Encoded(
            inputs={"x": pixel_values.to(lm.device)},
            tokens=_vit_tokens(n_prefix, grid),
            token_ids=list(range(n_prefix + grid[0] * grid[1])),
            ctx=TokenContext.vit(grid, n_prefix=n_prefix, n_layers=lm.n_layers),
            image=to_display(pixel_values, self.mean, self.std),
            notes=resize_note(image, pixel_values),
        )

    def forward(self, lm: LoadedModel, enc: Encoded) -> torch.Tensor:
        out = lm.module(enc.inputs["x"])
        return out[0].float()
