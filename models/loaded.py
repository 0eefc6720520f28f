"""One interface over every backend: what the tracer and the views rely on.

Like llm-transparency-tool's TransparentLlm, the rest of attnscope talks to a LoadedModel,
never to a concrete transformers or timm class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kernels.context import TokenContext
from kernels.errors import UserError


class ModelError(UserError, RuntimeError):
    """A model that cannot be loaded or run; the message says what to do."""


class InputError(UserError, ValueError):
    """Input the model cannot take (empty text, unreadable image...); the message says what to do."""


@dataclass
class Encoded:
    """A model-ready input and what the views need to label it."""

    inputs: dict[str, torch.Tensor]
    tokens: list[str]
    token_ids: list[int]
    ctx: TokenContext
    notes: list[str] = field(default_factory=list)  # e.g. "resized from 4000×3000"
    image: Any = None  # the RGB image as the model saw it (numpy HxWx3 uint8), for overlays

    def truncated(self, n: int) -> Encoded:
        """The first n tokens of a text input, with a note saying how many were dropped."""
        from dataclasses import replace

        total = len(self.tokens)
        if n >= total:
            return self
        if self.ctx.kind == "vit":
            raise InputError("an image input cannot be truncated")
        ctx = replace(self.ctx, n=n, special=self.ctx.special[:n], row=self.ctx.row[:n], col=self.ctx.col[:n])
        return replace(
            self,
            inputs={k: v[:, :n] for k, v in self.inputs.items()},
            tokens=self.tokens[:n],
            token_ids=self.token_ids[:n],
            ctx=ctx,
            notes=[*self.notes, f"truncated to the first {n} of {total} tokens ({total - n} dropped)"],
        )


@dataclass
class LoadedModel:
    model_id: str
    source: str  # preset | local | hub | gguf
    backend: str  # hf | timm
    kind: str  # vit | causal | bidirectional
    module: torch.nn.Module
    n_layers: int
    n_heads: int
    revision: str | None = None
    labels: list[str] | None = None
    max_tokens: int | None = None
    output_kind: str = "logits"  # logits | class_scores | hidden
    adapter: Any = None  # backend object with encode_text / encode_image / forward
    native_pattern: list[str] | None = None  # per layer, what the model itself does (models.pattern phrases)

    def encode_text(self, text: str) -> Encoded:
        if self.kind == "vit":
            raise InputError(f"{self.model_id} is a vision model; give it an image, not text")
        return self.adapter.encode_text(self, text)

    def encode_image(self, image) -> Encoded:
        if self.kind != "vit":
            raise InputError(f"{self.model_id} is a language model; give it text, not an image")
        return self.adapter.encode_image(self, image)

    @torch.no_grad()
    def forward(self, enc: Encoded) -> torch.Tensor:
        """The model's output for the trace: last-token logits, class scores or hidden states.

        Inside a trace every attention layer must have run through attnscope exactly once: a model that
        skips one or runs one module twice (ALBERT's shared layers) would record a wrong picture.
        """
        from models.inject import current_plan

        p = current_plan()
        before = p.calls if p is not None else 0
        out = self.adapter.forward(self, enc)
        if p is not None and p.calls - before != self.n_layers:
            raise ModelError(
                f"{self.model_id} ran {p.calls - before} attention calls through attnscope for its {self.n_layers} "
                "attention layers (shared or skipped layers); attnscope cannot trace it faithfully, see the model "
                "family table in the README"
            )
        return out

    def native_mask(self, layer: int, n: int) -> np.ndarray | None:
        """bool (n, n): what query i may see in `layer` by the model's own rule (a sliding, chunked or local
        window; Swin's windows on the patch grid), for the Mask lab; None when the rule hides nothing."""
        own = getattr(self.adapter, "native_mask", None)
        if own is not None:
            keep = own(self, layer)
            return None if keep is None else keep.cpu().numpy()
        from models import pattern

        return None if not self.native_pattern else pattern.mask(self.native_pattern[layer], n, self.kind == "causal")

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def to_display(pixel_values: torch.Tensor, mean, std) -> np.ndarray:
    """Undo the normalisation: the exact pixels the model saw, as HxWx3 uint8, for overlays."""
    x = pixel_values[0].float().cpu()
    x = (
        x * torch.as_tensor(std, dtype=torch.float32)[:, None, None]
        + torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
    )
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def resize_note(image, pixel_values: torch.Tensor) -> list[str]:
    """Say so when the model saw the image at another size than it was given."""
    w, h = image.size
    ph, pw = pixel_values.shape[-2:]
    return [] if (w, h) == (pw, ph) else [f"the image was resized from {w}×{h} to {pw}×{ph} pixels for the model"]
