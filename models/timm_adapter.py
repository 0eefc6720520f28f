"""timm vision transformers: a per-instance forward on each attention module routes attention through attnscope.

Which forward depends on the attention class (models/families/: timm's `Attention`, EVA's rotary
attention, BEiT's relative position bias, Swin's windows); a model with any other attention module
is refused in one line.
"""

from __future__ import annotations

import torch

from kernels.context import TokenContext
from models import families
from models.hf_adapter import _vit_tokens
from models.loaded import Encoded, LoadedModel, ModelError, resize_note, to_display


def wrap(model, model_id: str, source: str) -> LoadedModel:
    """Hook a timm model's attention (instance attributes only: models.attach.restored reverts them) and describe it."""
    name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    modules = [m for m in model.modules() if families.timm_family(m) is not None]
    if not modules or getattr(model, "patch_embed", None) is None:
        raise ModelError(families.refusal(name, "it has no attention module attnscope hooks (timm's Attention, "
                                                "EVA, BEiT or Swin attention)"))
    family = families.timm_family(modules[0])
    families.check_all_hooked(model, modules, name)
    families.install(model, family, modules)
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
        n_layers=len(modules),
        n_heads=modules[0].num_heads,
        labels=labels,
        output_kind="class_scores" if labels else "hidden",
        adapter=TimmAdapter(model, family, modules),
        native_pattern=family.describe(model, modules),
    )


class TimmAdapter:
    def __init__(self, model, family=None, modules=()):
        import timm.data

        cfg = timm.data.resolve_model_data_config(model)
        if not getattr(model, "dynamic_img_size", False):  # the model's own size wins over its pretrained_cfg
            cfg["input_size"] = (cfg["input_size"][0], *model.patch_embed.img_size)
        self.transform = timm.data.create_transform(**cfg)
        self.mean, self.std = cfg["mean"], cfg["std"]
        self.family, self.modules = family, list(modules)

    def encode_image(self, lm: LoadedModel, image) -> Encoded:
        rgb = image.convert("RGB")
        pixel_values = self.transform(rgb)[None]
        model = lm.module
        patch = model.patch_embed.patch_size
        grid = (pixel_values.shape[-2] // patch[0], pixel_values.shape[-1] // patch[1])
        n_prefix = getattr(model, "num_prefix_tokens", 0)
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

    def native_mask(self, lm: LoadedModel, layer: int) -> torch.Tensor | None:
        """bool (N, N): the keys each token may see in `layer` by the model's own rule (Swin's windows), or None."""
        own = getattr(self.family, "own_mask_of", None)
        return None if own is None else own(lm.module, self.modules, layer)
