"""What a variant may know about the tokens of one attention call."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

KINDS = ("vit", "causal", "bidirectional")


@dataclass(frozen=True)
class TokenContext:
    """Positions and roles of the N tokens one attention call sees.

    kind: "vit" (patch tokens on a grid), "causal" (decoder LM) or "bidirectional" (encoder).
    grid: (rows, cols) of the patch tokens for a ViT, else None.
    special: bool (N,) — CLS, registers, distillation tokens; they stay global by default.
    row, col: long (N,) — grid cell of each token (-1 for special tokens); 1D models use
    row = 0 and col = position.
    token_ids: long (N,) — the input's token ids (text models), for rules that read them (`document`).
    separators: the tokenizer's end-of-document ids (EOS, SEP), where `document` splits by default.
    """

    n: int
    kind: str
    grid: tuple[int, int] | None = None
    special: torch.Tensor | None = None
    row: torch.Tensor | None = None
    col: torch.Tensor | None = None
    layer: int = 0
    n_layers: int = 1
    n_heads: int = 1
    token_ids: torch.Tensor | None = None
    separators: tuple[int, ...] = ()
    calibration: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.special is None:
            object.__setattr__(self, "special", torch.zeros(self.n, dtype=torch.bool))
        if self.row is None:
            object.__setattr__(self, "row", torch.zeros(self.n, dtype=torch.long))
            object.__setattr__(self, "col", torch.arange(self.n))

    @property
    def causal(self) -> bool:
        return self.kind == "causal"

    @classmethod
    def sequence(cls, n: int, causal: bool, **kw) -> TokenContext:
        return cls(n=n, kind="causal" if causal else "bidirectional", **kw)

    @classmethod
    def vit(cls, grid: tuple[int, int], n_prefix: int = 1, **kw) -> TokenContext:
        """Prefix tokens (CLS, registers...) first, then patches in row-major order."""
        rows, cols = grid
        n = n_prefix + rows * cols
        special = torch.zeros(n, dtype=torch.bool)
        special[:n_prefix] = True
        cell = torch.arange(rows * cols)
        row = torch.cat([torch.full((n_prefix,), -1), cell // cols])
        col = torch.cat([torch.full((n_prefix,), -1), cell % cols])
        return cls(n=n, kind="vit", grid=(rows, cols), special=special, row=row, col=col, **kw)

    def truncated(self, n: int) -> TokenContext:
        """The first n tokens (a text cut short)."""
        token_ids = None if self.token_ids is None else self.token_ids[:n]
        return replace(self, n=n, special=self.special[:n], row=self.row[:n], col=self.col[:n], token_ids=token_ids)

    def with_layer(self, layer: int, n_heads: int) -> TokenContext:
        return replace(self, layer=layer, n_heads=n_heads)

    def to(self, device) -> TokenContext:
        token_ids = None if self.token_ids is None else self.token_ids.to(device)
        return replace(
            self, special=self.special.to(device), row=self.row.to(device), col=self.col.to(device),
            token_ids=token_ids,
        )
