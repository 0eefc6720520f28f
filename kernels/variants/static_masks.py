"""Family (a) of shared/VARIANTS.md: static masks, whose kept keys depend only on positions.

Each rule is a tiny pure function of FlexAttention-style index tensors, attention-gym style:
1D rules take token positions (q_idx, kv_idx) — on a ViT these are token indices, special
tokens included — and 2D rules take grid cells (r_q, c_q, r_kv, c_kv). A rule is written once
for torch, FlexAttention and the Triton kernels alike: only operators and `abs`, and `//` and `%`
only on operands that are never negative (where torch floors and Triton truncates). A variant class binds
the parameter values to its rule, keeps a ViT's special tokens global, and can write the very
same rule as a FlexAttention snippet (kernels/flex.py). The causal mask of a causal model is
ANDed by the attention path (kernels/reference.py, kernels/flex.py), not by the rules.

`RuleVariant` (the shared machinery for rules) is also the base of the score modifiers. A static
mask's Triton form is its rule itself (`StaticMask.kernel_form`), so a new mask touches one file.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kernels.context import TokenContext
from kernels.kernel_form import MASK_RULE, MAX_INTS, KernelSpec
from kernels.variants.base import FlexSource, Param, Variant, VariantError
from kernels.variants.registry import register

BOTH = frozenset({"vit", "causal", "bidirectional"})
VIT = frozenset({"vit"})
CAUSAL = frozenset({"causal"})


# ---------------------------------------------------------------- the rules (keep = True)


def sliding_window(q_idx, kv_idx, w, sinks):
    """|i−j| ≤ w, or j is one of the first `sinks` keys (StreamingLLM's attention sinks)."""
    return (abs(q_idx - kv_idx) <= w) | (kv_idx < sinks)


def strided(q_idx, kv_idx, stride):
    """|i−j| < l (the local band) or (i−j) mod l = 0 (every l-th key)."""
    offset = abs(q_idx - kv_idx)
    return (offset < stride) | (offset % stride == 0)


def fixed(q_idx, kv_idx, block, summary):
    """Same block of l tokens, or j among the last c tokens of its block (the summary columns)."""
    return (q_idx // block == kv_idx // block) | (kv_idx % block >= block - summary)


def dilated_window(q_idx, kv_idx, w, dilation):
    """Every d-th key within w·d positions: |i−j| ≤ w·d and (i−j) mod d = 0."""
    offset = abs(q_idx - kv_idx)
    return (offset <= w * dilation) & (offset % dilation == 0)


def window_2d(r_q, c_q, r_kv, c_kv, size, shift, rows, cols):
    """Same size×size window of the grid. shift: Swin's cyclic shift in cells (size//2, or 0) — window
    ids are taken after rolling the grid by −shift on both axes, so a window may wrap around the edge."""
    up, left = rows - shift % rows, cols - shift % cols  # (r − shift) mod rows, with a non-negative operand
    same_rows = (r_q + up) % rows // size == (r_kv + up) % rows // size
    same_cols = (c_q + left) % cols // size == (c_kv + left) % cols // size
    return same_rows & same_cols


def neighborhood_2d(r_q, c_q, r_kv, c_kv, k):
    """Chebyshev ball: max(|r_i−r_j|, |c_i−c_j|) ≤ k."""
    return (abs(r_q - r_kv) <= k) & (abs(c_q - c_kv) <= k)


def star(q_idx, kv_idx, block, q_tokens, n):
    """Context tokens see their own block and block 0; the last q_tokens tokens see all keys."""
    is_query_token = q_idx >= n - q_tokens
    return is_query_token | (q_idx // block == kv_idx // block) | (kv_idx < block)


# ---------------------------------------------------------------- shared machinery


class Source(str):
    """Python source standing for a value in a FlexAttention snippet, e.g. "math.ceil(N / 4)"."""


def as_source(value: Any) -> str:
    return str(value) if isinstance(value, Source) else repr(value)


@dataclass(frozen=True)
class Sizes:
    """Sizes a rule may need: concrete numbers for a run, Source names in a snippet."""

    n: Any
    rows: Any
    cols: Any
    n_heads: Any

    @classmethod
    def of(cls, ctx: TokenContext) -> Sizes:
        rows, cols = ctx.grid or (1, ctx.n)
        return cls(ctx.n, rows, cols, ctx.n_heads)


SNIPPET_SIZES = Sizes(Source("N"), Source("GRID[0]"), Source("GRID[1]"), Source("N_HEADS"))


def special_pair(ctx: TokenContext):
    """f(q_idx, kv_idx) -> bool: the query or the key is a special token; None when there are none."""
    special = ctx.special
    if not bool(special.any()):
        return None
    return lambda q_idx, kv_idx: special[q_idx] | special[kv_idx]


class RuleVariant(Variant):
    """A variant given by one position rule, `rule(positions..., **kwargs)`.

    positions: (q_idx, kv_idx), or (r_q, c_q, r_kv, c_kv) read from ctx.row / ctx.col when
    `on_grid`; preceded by the head index h when `per_head`. Subclasses map their parameter
    values to the rule's keyword arguments in `rule_kwargs` (renaming only, so the same code
    serves concrete values and snippet source) and give auto values in `auto_value` and
    `auto_source`.
    """

    rule: ClassVar[Callable]
    helpers: ClassVar[tuple[Callable, ...]] = ()  # functions `rule` calls
    on_grid: ClassVar[bool] = False
    per_head: ClassVar[bool] = False

    def rule_kwargs(self, values: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
        return values

    def auto_source(self, name: str, kind: str) -> Any:
        """Snippet source of an auto parameter (a Source expression or a literal)."""
        raise VariantError(f"{self.name}: parameter {name} has no automatic value; set it explicitly")

    def bound_rule(self, ctx: TokenContext) -> Callable:
        """f(h, q_idx, kv_idx) -> the rule's tensor for this context and these parameters."""
        rule, kwargs = self.rule, self.rule_kwargs(self.resolved(ctx), Sizes.of(ctx))
        row, col = ctx.row, ctx.col
        if self.on_grid:
            positions = lambda q_idx, kv_idx: (row[q_idx], col[q_idx], row[kv_idx], col[kv_idx])
        else:
            positions = lambda q_idx, kv_idx: (q_idx, kv_idx)
        if self.per_head:
            return lambda h, q_idx, kv_idx: rule(h, *positions(q_idx, kv_idx), **kwargs)
        return lambda h, q_idx, kv_idx: rule(*positions(q_idx, kv_idx), **kwargs)

    def rule_source(self, kind: str) -> str:
        """The rule call as snippet source, parameter values baked in."""
        values = {k: self.auto_source(k, kind) if v is None else v for k, v in self.values.items()}
        kwargs = self.rule_kwargs(values, SNIPPET_SIZES)
        positions = "ROW[q_idx], COL[q_idx], ROW[kv_idx], COL[kv_idx]" if self.on_grid else "q_idx, kv_idx"
        head = "h, " if self.per_head else ""
        args = ", ".join(f"{k}={as_source(v)}" for k, v in kwargs.items())
        return f"{self.rule.__name__}({head}{positions}, {args})"


class StaticMask(RuleVariant):
    """A static mask: `rule` says which keys each query keeps. Special tokens stay global."""

    family = "static_mask"

    def mask_mod(self, ctx: TokenContext):
        keep_rule, is_special = self.bound_rule(ctx), special_pair(ctx)
        if is_special is None:
            return lambda b, h, q_idx, kv_idx: keep_rule(h, q_idx, kv_idx)
        return lambda b, h, q_idx, kv_idx: keep_rule(h, q_idx, kv_idx) | is_special(q_idx, kv_idx)

    def flex_source(self, ctx_kind: str) -> FlexSource:
        return FlexSource(functions=(*self.helpers, self.rule), mask=self.rule_source(ctx_kind))

    def kernel_form(self, ctx: TokenContext) -> KernelSpec | None:
        """The same rule in the Triton kernels, its integer parameters in the rule's own order. (The kernels
        AND every rule with causality: a mask that widens it runs on the reference path.)"""
        kwargs = self.rule_kwargs(self.resolved(ctx), Sizes.of(ctx))
        names = list(inspect.signature(self.rule).parameters)[4 if self.on_grid else 2:]
        if (self.widens_mask or self.per_head or self.helpers or len(names) > MAX_INTS
                or any(type(kwargs[n]) is not int for n in names)):
            return None
        return KernelSpec(mask=MASK_RULE, rule=self.rule, rule_grid=self.on_grid, ints=tuple(kwargs[n] for n in names),
                          uses_grid=self.on_grid)


# ---------------------------------------------------------------- the variants


@register
class SlidingWindow(StaticMask):
    """Sliding window with attention sinks: keep j when |i−j| ≤ w (causal: 0 ≤ i−j ≤ w) or j < sinks.

    Local attention of the Sparse Transformer (Child et al., 2019, arXiv:1904.10509) plus the
    attention sinks of StreamingLLM (Xiao et al., 2023, arXiv:2309.17453). On a ViT positions
    are token indices and the special tokens already act as sinks, so `sinks` defaults to 0 there.
    """

    name = "sliding_window"
    applies_to = BOTH
    rule = staticmethod(sliding_window)
    params = (
        Param("w", int, 256, "window radius: keys at most w positions away", low=0),
        Param("sinks", int, None, "the first `sinks` keys are always kept", low=0, auto="4 (LLM), 0 (ViT)"),
    )

    def auto_value(self, name, ctx):
        return 0 if ctx.kind == "vit" else 4

    def auto_source(self, name, kind):
        return 0 if kind == "vit" else 4


@register
class Strided(StaticMask):
    """Strided pattern: keep j when |i−j| < l or (i−j) mod l = 0.

    The strided attention of the Sparse Transformer (Child et al., 2019, arXiv:1904.10509), both
    of its factorised heads merged into one mask. l defaults to ⌈√N⌉.
    """

    name = "strided"
    applies_to = BOTH
    rule = staticmethod(strided)
    params = (Param("l", int, None, "stride and local band width", low=1, auto="⌈√N⌉"),)

    def rule_kwargs(self, values, sizes):
        return {"stride": values["l"]}

    def auto_value(self, name, ctx):
        return math.ceil(math.sqrt(ctx.n))

    def auto_source(self, name, kind):
        return Source("math.ceil(math.sqrt(N))")


@register
class Fixed(StaticMask):
    """Fixed pattern: keep j when ⌊j/l⌋ = ⌊i/l⌋ or j mod l ≥ l−c.

    The fixed attention of the Sparse Transformer (Child et al., 2019, arXiv:1904.10509): blocks
    of l tokens, the last c of each block summarise it for everyone. LLM: l=128, c=8; ViT: l=W
    (the grid width), c=1 — positions are token indices, so with prefix tokens the blocks are
    offset from the grid rows by the number of prefix tokens.
    """

    name = "fixed"
    applies_to = BOTH
    rule = staticmethod(fixed)
    params = (
        Param("l", int, None, "block length", low=1, auto="128 (LLM), W (ViT)"),
        Param("c", int, None, "summary tokens at the end of each block", low=0, auto="8 (LLM), 1 (ViT)"),
    )

    def __init__(self, **values):
        super().__init__(**values)
        if self.l is not None and self.c is not None and self.c > self.l:
            raise VariantError(f"{self.name}: c={self.c} out of range; expected an int in [0, l={self.l}]")

    def rule_kwargs(self, values, sizes):
        return {"block": values["l"], "summary": values["c"]}

    def auto_value(self, name, ctx):
        if ctx.kind == "vit":
            return ctx.grid[1] if name == "l" else 1
        return 128 if name == "l" else 8

    def auto_source(self, name, kind):
        if kind == "vit":
            return Source("GRID[1]") if name == "l" else 1
        return 128 if name == "l" else 8


@register
class DilatedWindow(StaticMask):
    """Dilated sliding window: keep j when |i−j| ≤ w·d and (i−j) mod d = 0.

    The dilated sliding window of Longformer (Beltagy et al., 2020, arXiv:2004.05150).
    """

    name = "dilated_window"
    applies_to = BOTH
    rule = staticmethod(dilated_window)
    params = (
        Param("w", int, 64, "keys kept on each side", low=0),
        Param("d", int, 2, "dilation: distance between kept keys", low=1),
    )

    def rule_kwargs(self, values, sizes):
        return {"w": values["w"], "dilation": values["d"]}


@register
class Window2D(StaticMask):
    """Non-overlapping M×M windows on the patch grid: keep j when i and j share a window.

    Window attention of Swin (Liu et al., 2021, arXiv:2103.14030), also Twins' locally-grouped
    attention (Chu et al., 2021, arXiv:2104.13840) and Flash Window Attention. Windows start at
    cell (0, 0); at the right/bottom edge a window may be cut short (no padding).
    shift=True is Swin's shifted window with the cyclic rule: with s = M//2, the window of cell
    (r, c) is (((r − s) mod H) // M, ((c − s) mod W) // M), i.e. windows after rolling the grid by
    −s on both axes. Swin's extra mask that separates the wrapped-around pieces inside a window
    is not applied: wrapped pieces attend to each other.
    """

    name = "window_2d"
    applies_to = VIT
    rule = staticmethod(window_2d)
    on_grid = True
    params = (
        Param("M", int, 7, "window side in patches", low=1),
        Param("shift", bool, False, "shift the windows by M//2 with the cyclic rule (Swin's odd layers)"),
    )

    def rule_kwargs(self, values, sizes):
        shift = values["M"] // 2 if values["shift"] else 0
        return {"size": values["M"], "shift": shift, "rows": sizes.rows, "cols": sizes.cols}


@register
class Neighborhood2D(StaticMask):
    """Neighborhood attention: keep j when max(|r_i−r_j|, |c_i−c_j|) ≤ k.

    Neighborhood Attention Transformer / NATTEN (Hassani et al., 2022, arXiv:2204.07143). This is
    the catalogue's rule, a (2k+1)×(2k+1) square centred on the query and clipped at the grid's
    edge; NATTEN itself shifts the square inwards at the edge so every query keeps as many keys.
    """

    name = "neighborhood_2d"
    applies_to = VIT
    rule = staticmethod(neighborhood_2d)
    on_grid = True
    params = (Param("k", int, 3, "neighbourhood radius in patches (Chebyshev distance)", low=0),)


@register
class Star(StaticMask):
    """Star Attention: the context is split in blocks of b; a context token sees its own block
    (causally) and block 0 (the anchor block); the last `q_tokens` tokens see everything before.

    Acharya et al., 2024, "Star Attention: Efficient LLM Inference over Long Sequences",
    arXiv:2411.17116. b defaults to ⌈N/4⌉.
    """

    name = "star"
    applies_to = CAUSAL
    rule = staticmethod(star)
    params = (
        Param("b", int, None, "context block length", low=1, auto="⌈N/4⌉"),
        Param("q_tokens", int, 16, "trailing query tokens that attend to everything before them", low=0),
    )

    def rule_kwargs(self, values, sizes):
        return {"block": values["b"], "q_tokens": values["q_tokens"], "n": sizes.n}

    def auto_value(self, name, ctx):
        return max(1, math.ceil(ctx.n / 4))

    def auto_source(self, name, kind):
        return Source("max(1, math.ceil(N / 4))")


def demo(variant: str = "window_2d:M=3,shift=true", grid: tuple[int, int] = (6, 6)) -> str:
    """Draw one variant's mask on a small ViT as text (# kept, . masked): `python -m kernels.variants.static_masks`."""
    from kernels.variants.registry import parse_variant

    v = parse_variant(variant)
    ctx = TokenContext.vit(grid, n_prefix=1)
    v.check(ctx)
    i, j = torch.arange(ctx.n)[:, None], torch.arange(ctx.n)[None, :]
    keep = v.mask_mod(ctx)(torch.zeros(1, 1), torch.zeros(1, 1), i, j)
    return "\n".join("".join("#" if x else "." for x in row) for row in keep.tolist())


if __name__ == "__main__":
    print(demo())
