"""Family (c) of shared/VARIANTS.md: score modifiers.

decay_1d, manhattan_decay and gaussian_2d add a position bias to s = QKᵀ·scale: each bias is a
tiny pure function (attention-gym style) bound to the parameters by a `ScoreMod` class, usable
as a FlexAttention score_mod. On a ViT a pair that involves a special token gets no bias.
The other three are not pure biases: polyline_path mixes two softmaxes (`attend`), relaxed
changes the normaliser (`row_probs`), head_ablation zeroes heads (`head_weight`).
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

import torch

from kernels.context import TokenContext
from kernels.core import softmax_lse
from kernels.kernel_form import BIAS_D2_TABLE, BIAS_DISTANCE, BIAS_GRID_D2, BIAS_MANHATTAN, ContentTables, KernelSpec
from kernels.variants.base import FlexSource, Param, Variant, VariantError
from kernels.variants.registry import register
from kernels.variants.static_masks import BOTH, VIT, RuleVariant, special_pair

# ---------------------------------------------------------------- the biases


def retention_log_gamma(h, a, b, n_heads):
    """log γ_h with RetNet's per-head schedule γ_h = 1 − 2^(−a − b·h/H).

    Floored at −1e4: γ → 0 (tiny a) then gives zero weight off the diagonal instead of 0·(−inf) = NaN on it.
    """
    return torch.log1p(-torch.exp2(-(a + b * h / n_heads))).clamp_min(-1e4)


def decay_1d(h, q_idx, kv_idx, a, b, n_heads):
    """|i−j|·log γ_h: exponential decay with the token distance (RetNet)."""
    return (q_idx - kv_idx).abs() * retention_log_gamma(h, a, b, n_heads)


def manhattan_decay(h, r_q, c_q, r_kv, c_kv, a, b, n_heads):
    """(|r_i−r_j| + |c_i−c_j|)·log γ_h: decay with the Manhattan distance on the grid (RMT)."""
    return ((r_q - r_kv).abs() + (c_q - c_kv).abs()) * retention_log_gamma(h, a, b, n_heads)


def gaussian_coefficient(sigma, lam):
    """−λ/(2σ²), floored at −1e4 so a vanishing σ gives zero weight off the diagonal, never 0/0 = NaN on it."""
    return max(-lam / 2 / sigma / sigma, -1e4)  # divided twice: σ² itself may underflow to 0


def gaussian_mixture(d2, sigmas, log_weights, lam):
    """log Σ_m w_m·exp(−λ·d²/(2σ_m²)) of squared distances d2; one σ gives −λ·d²/(2σ²)."""
    terms = [log_w + gaussian_coefficient(sigma, lam) * d2 for sigma, log_w in zip(sigmas, log_weights)]
    return torch.logsumexp(torch.stack(terms), dim=0)


def gaussian_2d(r_q, c_q, r_kv, c_kv, sigmas, log_weights, lam):
    """The Gaussian mixture of the squared Euclidean grid distance d² = Δr² + Δc²."""
    return gaussian_mixture((r_q - r_kv) ** 2 + (c_q - c_kv) ** 2, sigmas, log_weights, lam)


# ---------------------------------------------------------------- pure score modifiers


class ScoreMod(RuleVariant):
    """A pure score modifier: s + rule(...). Pairs with a special token get no bias."""

    family = "score_mod"

    def score_mod(self, ctx: TokenContext):
        bias_rule, is_special = self.bound_rule(ctx), special_pair(ctx)
        if is_special is None:
            return lambda score, b, h, q_idx, kv_idx: score + bias_rule(h, q_idx, kv_idx)
        return lambda score, b, h, q_idx, kv_idx: score + torch.where(
            is_special(q_idx, kv_idx), 0.0, bias_rule(h, q_idx, kv_idx)
        )

    def flex_source(self, ctx_kind: str) -> FlexSource:
        return FlexSource(functions=(*self.helpers, self.rule), bias=self.rule_source(ctx_kind))


class RetentionDecay(ScoreMod):
    """A distance times RetNet's per-head log γ_h (decay_1d, manhattan_decay)."""

    helpers = (retention_log_gamma,)
    per_head = True
    kernel_bias: ClassVar[int]  # the distance the kernels multiply by log γ_h

    def rule_kwargs(self, values, sizes):
        return {"a": values["a"], "b": values["b"], "n_heads": sizes.n_heads}

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        a, b, n_heads = self.a, self.b, ctx.n_heads
        return KernelSpec(bias=self.kernel_bias, uses_grid=self.on_grid,
                          head_coef=lambda heads: retention_log_gamma(torch.arange(heads, dtype=torch.float64), a, b,
                                                                      n_heads))


def _retention_params(a: float, b: float) -> tuple[Param, ...]:
    return (
        Param("a", float, a, "γ_h = 1 − 2^(−a − b·h/H): decay exponent of head 0", low=0, low_open=True),
        Param("b", float, b, "growth of the exponent across heads (0: every head decays alike)", low=0),
    )


@register
class Decay1D(RetentionDecay):
    """RetNet's retention decay as a bias: s + |i−j|·log γ_h, γ_h = 1 − 2^(−a − b·h/H).

    Sun et al., 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
    arXiv:2307.08621. Positions are token indices (a ViT's special tokens are at distance 0 from all).
    """

    name = "decay_1d"
    applies_to = BOTH
    rule = staticmethod(decay_1d)
    kernel_bias = BIAS_DISTANCE
    params = _retention_params(5.0, 3.0)


@register
class ManhattanDecay(RetentionDecay):
    """RMT's Manhattan self-attention: s + (|r_i−r_j| + |c_i−c_j|)·log γ_h, RetNet's γ_h schedule.

    Fan et al., 2023, "RMT: Retentive Networks Meet Vision Transformers", arXiv:2309.11523.
    Special tokens get no decay.
    """

    name = "manhattan_decay"
    applies_to = VIT
    rule = staticmethod(manhattan_decay)
    kernel_bias = BIAS_MANHATTAN
    on_grid = True
    params = _retention_params(2.0, 5.0)


@register
class Gaussian2D(ScoreMod):
    """Gaussian mask on the grid: s − λ·d²/(2σ²), d the Euclidean distance between grid cells.

    The Gaussian mixture mask (GMM) of Li & Zhang, 2023, "Toward a Deeper Understanding: RetNet
    Viewed through Convolution", arXiv:2309.05375, written as an additive log-space bias.
    Mixture: with `sigmas` (e.g. "1;2;4") and optional `weights` (same count, normalised to sum
    to 1; equal when empty) the bias is log Σ_m w_m·exp(−λ·d²/(2σ_m²)); `sigmas` overrides
    `sigma`. Both forms give bias 0 at d = 0 and to special tokens.
    """

    name = "gaussian_2d"
    applies_to = VIT
    rule = staticmethod(gaussian_2d)
    helpers = (gaussian_coefficient, gaussian_mixture)
    on_grid = True
    params = (
        Param("sigma", float, 2.0, "width in patches", low=0, low_open=True),
        Param("lam", float, 1.0, "strength λ", low=0),
        Param("sigmas", str, "", "mixture widths, e.g. 1;2;4 (overrides sigma)"),
        Param("weights", str, "", "mixture weights, one per sigma (normalised; equal when empty)"),
    )

    def __init__(self, **values):
        super().__init__(**values)
        sigmas = _parse_floats(self.name, "sigmas", self.values["sigmas"], positive=True)
        weights = _parse_floats(self.name, "weights", self.values["weights"], positive=False)
        if weights and len(weights) != len(sigmas or (self.sigma,)):
            raise VariantError(
                f"{self.name}: weights={self.values['weights']!r} must give one weight per sigma "
                f"({len(sigmas or (self.sigma,))})"
            )
        if weights and sum(weights) <= 0:
            raise VariantError(f"{self.name}: weights={self.values['weights']!r} must not all be 0")
        self.mixture = sigmas or (self.sigma,)
        weights = weights or (1.0,) * len(self.mixture)
        self.log_weights = tuple(math.log(w / sum(weights)) if w > 0 else -math.inf for w in weights)

    def rule_kwargs(self, values, sizes):
        return {"sigmas": self.mixture, "log_weights": self.log_weights, "lam": values["lam"]}

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        """One σ: a coefficient of the squared grid distance; a mixture: the bias tabled by squared distance."""
        if len(self.mixture) == 1 and self.log_weights[0] == 0.0:
            coef = gaussian_coefficient(self.mixture[0], self.lam)
            return KernelSpec(bias=BIAS_GRID_D2, uses_grid=True,
                              head_coef=lambda heads: torch.full((heads,), coef, dtype=torch.float64))
        rows, cols = ctx.grid
        d2 = torch.arange((rows - 1) ** 2 + (cols - 1) ** 2 + 1, dtype=torch.float64)
        table = gaussian_mixture(d2, self.mixture, self.log_weights, self.lam)
        return KernelSpec(bias=BIAS_D2_TABLE, d2_table=table, uses_grid=True)


def _parse_floats(variant: str, param: str, text: str, positive: bool) -> tuple[float, ...]:
    """"1;2;4", "1,2,4" or "[1, 2, 4]" → (1.0, 2.0, 4.0); empty → ()."""
    items = [s for s in re.split(r"[;,\s]+", text.strip().strip("[]()")) if s]
    expected = "numbers > 0" if positive else "numbers ≥ 0"
    try:
        values = tuple(float(s) for s in items)
    except ValueError:
        raise VariantError(
            f"{variant}: parameter {param}={text!r} is not valid; expected {expected} like 1;2;4"
        ) from None
    if any(not math.isfinite(x) or x < 0 or (positive and x == 0) for x in values):
        raise VariantError(f"{variant}: {param}={text!r} out of range; expected {expected} like 1;2;4")
    return values


# ---------------------------------------------------------------- polyline path


def polyline_biases(log_alpha, log_beta, r_q, c_q, r_kv, c_kv):
    """The two polyline path biases of PPMA from prefix sums; no loop over pairs.

    log_alpha, log_beta: (..., rows, cols) log of each token's horizontal / vertical decay.
    r_q, c_q, r_kv, c_kv: long grid cells, broadcast against each other (e.g. (c, 1) and (1, Nk)).
    Returns (L, L'), each (..., *broadcast shape): L goes along row r_i to column c_j and then
    along column c_j to row r_j; L' goes along column c_i first. Each sums log α over the
    horizontal steps and log β over the vertical steps, counting the token stepped onto (the
    start token is excluded).
    """
    cols = log_alpha.shape[-1]
    along_row = log_alpha.cumsum(-1).flatten(-2)  # Σ_{c' ≤ c} log α[r, c'], flat cell r·W + c
    along_row_excl = along_row - log_alpha.flatten(-2)  # Σ_{c' < c}
    along_col = log_beta.cumsum(-2).flatten(-2)  # Σ_{r' ≤ r} log β[r', c]
    along_col_excl = along_col - log_beta.flatten(-2)

    def on_row(r, c_from, c_to):  # moving along row r from column c_from to column c_to
        forward = along_row[..., r * cols + c_to] - along_row[..., r * cols + c_from]
        backward = along_row_excl[..., r * cols + c_from] - along_row_excl[..., r * cols + c_to]
        return torch.where(c_to >= c_from, forward, backward)

    def on_col(c, r_from, r_to):  # moving along column c from row r_from to row r_to
        forward = along_col[..., r_to * cols + c] - along_col[..., r_from * cols + c]
        backward = along_col_excl[..., r_from * cols + c] - along_col_excl[..., r_to * cols + c]
        return torch.where(r_to >= r_from, forward, backward)

    horizontal_first = on_row(r_q, c_q, c_kv) + on_col(c_kv, r_q, r_kv)
    vertical_first = on_col(c_q, r_q, r_kv) + on_row(r_kv, c_q, c_kv)
    return horizontal_first, vertical_first


def polyline_tables(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix sums polyline_biases reads, flattened row-major per cell, as the Triton kernels take them.

    Returns (row table, column table), each (..., 2, rows·cols): [0] inclusive, [1] exclusive sums.
    Moving along row r from column a to b ≥ a sums row[0][r, b] − row[0][r, a]; to b < a it sums
    row[1][r, a] − row[1][r, b] (the token stepped onto counts, the start does not).
    """
    along_row = log_alpha.cumsum(-1)
    along_col = log_beta.cumsum(-2)
    row = torch.stack([along_row, along_row - log_alpha], dim=-3).flatten(-2)
    col = torch.stack([along_col, along_col - log_beta], dim=-3).flatten(-2)
    return row, col


def neighbour_similarity(k_grid: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean cosine similarity of each cell's key with its neighbours along `dim` (-3 rows, -2 cols).

    k_grid: (B, H, rows, cols, D) -> (B, H, rows, cols); 0 where a cell has no such neighbour.
    """
    unit = torch.nn.functional.normalize(k_grid.float(), dim=-1)
    n = unit.shape[dim]
    sim = (unit.narrow(dim, 1, n - 1) * unit.narrow(dim, 0, n - 1)).sum(-1)  # between cells t and t+1
    pad_dim = dim + 1  # the feature axis is gone: -3 → -2, -2 → -1
    before = _pad_along(sim, pad_dim, front=True)  # similarity with the previous cell
    after = _pad_along(sim, pad_dim, front=False)  # with the next cell
    count = _pad_along(torch.ones_like(sim), pad_dim, True) + _pad_along(torch.ones_like(sim), pad_dim, False)
    return (before + after) / count.clamp(min=1)


def _pad_along(x: torch.Tensor, dim: int, front: bool) -> torch.Tensor:
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([zero, x] if front else [x, zero], dim=dim)


@register
class PolylinePath(Variant):
    """Polyline path masked attention: ½·softmax(s+L) + ½·softmax(s+L'), L and L' the log decay along
    the two L-shaped grid paths from i to j (horizontal-first and vertical-first).

    Zhao et al., 2025, "Polyline Path Masked Attention for Vision Transformer" (PPMA),
    arXiv:2506.15940. Each patch t has a horizontal decay α_t and a vertical decay β_t in (0, 1];
    constant α = β = γ reduces to manhattan_decay with γ. edge_aware=True makes the decays follow
    the content: α_t = alpha^(1 − ⟨cos⟩), ⟨cos⟩ the mean cosine similarity of t's key (per head)
    with its left and right neighbours' keys (β_t: with the neighbours above and below), so a path
    crossing an edge between dissimilar patches decays more, within [alpha², 1].
    L, L' come from two prefix-sum tables per head (along rows of log α, along columns of log β).
    Special tokens get no decay. The recorded LSE is that of the unbiased masked scores.
    """

    name = "polyline_path"
    family = "score_mod"
    applies_to = VIT
    params = (
        Param("alpha", float, 0.9, "horizontal decay per step", low=0, high=1, low_open=True),
        Param("beta", float, 0.9, "vertical decay per step", low=0, high=1, low_open=True),
        Param("edge_aware", bool, False, "scale the decays by neighbour key similarity (per head)"),
    )

    def flex_snippet(self, ctx_kind=None, **sizes):
        raise VariantError(f"{self.name} mixes two softmaxes; it has no FlexAttention form (not a single score_mod)")

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        """Two online softmaxes in one kernel pass, the path biases from per-(kv-)head prefix-sum tables."""

        def content(q, k):
            return ContentTables(polyline=polyline_tables(*self.log_decays(k, ctx.to(k.device))))

        return KernelSpec(paths=2, content=content, uses_grid=True)

    def log_decays(self, k: torch.Tensor, ctx: TokenContext) -> tuple[torch.Tensor, torch.Tensor]:
        """log α, log β per grid cell: (1, 1, rows, cols) constants, or (B, H, rows, cols) edge-aware."""
        rows, cols = ctx.grid
        log_alpha = torch.full((1, 1, rows, cols), math.log(self.alpha), dtype=torch.float64, device=k.device)
        log_beta = torch.full((1, 1, rows, cols), math.log(self.beta), dtype=torch.float64, device=k.device)
        if not self.edge_aware:
            return log_alpha, log_beta
        k_grid = k[:, :, cell_tokens(ctx)].unflatten(2, (rows, cols))  # (B, H, rows, cols, D)
        log_alpha = (1 - neighbour_similarity(k_grid, dim=-2).double()) * log_alpha
        log_beta = (1 - neighbour_similarity(k_grid, dim=-3).double()) * log_beta
        return log_alpha, log_beta

    def attend(self, call):
        ctx = call.dctx
        self.check(ctx)
        if call.k.shape[2] != call.q.shape[2]:
            raise VariantError(f"{self.name} needs self-attention over the grid "
                               f"(got {call.q.shape[2]} queries, {call.k.shape[2]} keys)")
        log_alpha, log_beta = self.log_decays(call.k, ctx)
        row, col = ctx.row.clamp(min=0), ctx.col.clamp(min=0)  # special tokens: any cell, bias zeroed below

        def normalise(s, q0, q1, kv_idx, sink):
            qi = torch.arange(q0, q1, device=s.device)[:, None]  # (c, 1)
            kj = kv_idx[None, :]  # (1, w)
            paths = polyline_biases(log_alpha, log_beta, row[qi], col[qi], row[kj], col[kj])
            global_pair = ctx.special[qi] | ctx.special[kj]  # (c, w): no decay to special tokens
            biases = [torch.where(global_pair, 0.0, path).float() for path in paths]  # (B|1, H|1, c, w)
            p = 0.5 * softmax_lse(s + biases[0], sink)[0] + 0.5 * softmax_lse(s + biases[1], sink)[0]
            return p, s, softmax_lse(s, sink)[1]

        return call.softmax(normalise=normalise)


def cell_tokens(ctx: TokenContext) -> torch.Tensor:
    """long (rows·cols,): the token at each grid cell, row-major."""
    rows, cols = ctx.grid
    patches = torch.nonzero(~ctx.special).flatten()
    cells = ctx.row[patches] * cols + ctx.col[patches]
    every_cell_once = torch.equal(cells.sort().values, torch.arange(rows * cols, device=cells.device))
    if cells.numel() != rows * cols or not every_cell_once:
        raise VariantError(f"a {rows}×{cols} grid needs exactly one patch token per cell")
    return patches[cells.argsort()]


# ---------------------------------------------------------------- relaxed, head ablation


@register
class Relaxed(Variant):
    """Relaxed attention: A' = (1−γ)·A + γ/n_i on the n_i keys row i may see (masked keys stay 0).

    Lohrenz et al., 2021, "Relaxed Attention: A Simple Method to Boost Performance of End-to-End
    Automatic Speech Recognition", arXiv:2107.01275 (and Relaxed Attention for Transformer Models,
    Lohrenz et al., 2022, arXiv:2209.09735). The recorded LSE is that of the softmax before relaxing.
    """

    name = "relaxed"
    family = "score_mod"
    applies_to = BOTH
    params = (Param("gamma", float, 0.1, "weight of the uniform distribution", low=0, high=1, low_open=True),)

    def flex_snippet(self, ctx_kind=None, **sizes):
        raise VariantError(f"{self.name} changes the softmax normaliser; it has no FlexAttention form")

    def row_probs(self, s, q_idx, kv_idx, ctx):
        """s: masked scores (B, H, c, w), −∞ where masked -> relaxed probabilities, 0 where masked."""
        visible = ~torch.isneginf(s)
        uniform = visible / visible.sum(-1, keepdim=True).clamp(min=1)  # 1/n_i on the visible keys
        return (1 - self.gamma) * softmax_lse(s)[0] + self.gamma * uniform


@register
class HeadAblation(Variant):
    """Zero chosen heads' outputs (and their attention maps) in chosen layers.

    Head masking as in Michel et al., 2019, "Are Sixteen Heads Really Better than One?",
    arXiv:1905.10650; HeadMask (Sun et al., 2020, "Alleviating the Inequality of Attention Heads
    for Neural Machine Translation"); the head pruning of VTrans (2024) for ViTs.
    `heads`: (layer, head) pairs written "0.1;2.3" or "[(0,1),(2,3)]"; empty ablates nothing.
    Ablated rows are not marked empty: the head ran, its output is dropped.
    """

    name = "head_ablation"
    family = "score_mod"
    applies_to = BOTH
    params = (Param("heads", str, "", "(layer, head) pairs: 0.1;2.3 or [(0,1),(2,3)]"),)

    def __init__(self, **values):
        super().__init__(**values)
        self.pairs = parse_head_pairs(self.name, self.values["heads"])

    def flex_snippet(self, ctx_kind=None, **sizes):
        raise VariantError(f"{self.name} zeroes head outputs; it has no FlexAttention form")

    def check(self, ctx: TokenContext) -> None:
        super().check(ctx)
        bad = sorted(layer for layer, _ in self.pairs if layer >= ctx.n_layers)
        if bad:
            raise VariantError(f"{self.name}: heads names layer {bad[0]}; the model has layers 0..{ctx.n_layers - 1}")

    def ablated_heads(self, layer: int, n_heads: int) -> list[int]:
        heads = sorted(h for lyr, h in self.pairs if lyr == layer)
        if heads and heads[-1] >= n_heads:
            raise VariantError(
                f"{self.name}: heads names head {heads[-1]} of layer {layer}; it has heads 0..{n_heads - 1}"
            )
        return heads

    def head_weight(self, ctx: TokenContext, heads: int) -> torch.Tensor:
        weight = torch.ones(heads)
        weight[self.ablated_heads(ctx.layer, heads)] = 0.0
        return weight

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        return KernelSpec(zero_heads=tuple(self.ablated_heads(ctx.layer, ctx.n_heads)))


_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_DOTTED = re.compile(r"(\d+)\s*[.:]\s*(\d+)")


def parse_head_pairs(variant: str, text: str) -> tuple[tuple[int, int], ...]:
    """"0.1;2.3", "0:1;2:3" or "[(0,1),(2,3)]" -> ((0, 1), (2, 3)); empty -> ()."""
    text = text.strip()
    if not text or text in ("[]", "()"):
        return ()
    if "(" in text:
        body = text.strip()[1:-1] if text.startswith("[") and text.endswith("]") else text
        found = _PAIR.findall(body)
        rest = _PAIR.sub("", body)
        ok = found and not rest.replace(",", "").strip()
    else:
        items = [s.strip() for s in text.split(";") if s.strip()]
        matches = [_DOTTED.fullmatch(s) for s in items]
        found = [m.groups() for m in matches if m]
        ok = found and len(found) == len(items)
    if not ok:
        raise VariantError(
            f"{variant}: parameter heads={text!r} is not valid; expected (layer, head) pairs of integers ≥ 0 "
            "like 0.1;2.3 or [(0,1),(2,3)]"
        )
    return tuple(sorted({(int(a), int(b)) for a, b in found}))
