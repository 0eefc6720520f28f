"""Variant → kernel switches: which compiled path of the Triton kernels computes a variant.

`kernel_spec(variant, ctx)` returns a `KernelSpec` (compile-time switches MASK / BIAS / PATHS and
the runtime numbers they read), or None when the kernels do not implement that variant or
context; callers then use the reference path. Semantics follow kernels/variants exactly:

  mask  (token rule ORed with "query or key is special", ANDed with causality and the model mask)
    MASK_NONE          full
    MASK_SLIDING       |i−j| ≤ w or j < sinks                 P0=w, P1=sinks
    MASK_STRIDED       |i−j| < l or (i−j) mod l = 0          P0=l
    MASK_FIXED         ⌊i/l⌋ = ⌊j/l⌋ or j mod l ≥ l−c        P0=l, P1=c
    MASK_DILATED       |i−j| ≤ w·d and (i−j) mod d = 0       P0=w·d, P1=d
    MASK_WINDOW2D      same M×M window of cells (cyclic shift s)  P0=M, P1=s, P2=rows, P3=cols
    MASK_NEIGHBORHOOD  Chebyshev cell distance ≤ k           P0=k
    MASK_STAR          i ≥ n−q_tokens, same block of b, or j < b   P0=b, P1=q_tokens, P2=n
    MASK_GROUP         table[g(i), g(j)] from a per-(batch, head) group table: block_topk
                       (groups = blocks of b tokens), routing_2d (groups = regions), or any
                       block-sparse table given with `KernelSpec.block_sparse`
  bias  (added to s; zero on pairs with a special token), in log2 units inside the kernel
    BIAS_DECAY1D       |i−j|·log γ_h
    BIAS_MANHATTAN     (|Δr|+|Δc|)·log γ_h
    BIAS_GAUSSIAN      −λ·d²/(2σ²)        one σ;  BIAS_D2TABLE: table[d²] for a mixture of σ's
  PATHS=2  polyline_path: ½·softmax(s+L) + ½·softmax(s+L') from per-head prefix-sum tables
  zero_heads           head_ablation: full attention, chosen heads' outputs zeroed
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.context import TokenContext
from kernels.variants import score_mods
from kernels.variants.base import Variant

LOG2E = 1.4426950408889634

MASK_NONE, MASK_SLIDING, MASK_STRIDED, MASK_FIXED, MASK_DILATED = 0, 1, 2, 3, 4
MASK_WINDOW2D, MASK_NEIGHBORHOOD, MASK_STAR, MASK_GROUP = 5, 6, 7, 8
BIAS_NONE, BIAS_DECAY1D, BIAS_MANHATTAN, BIAS_GAUSSIAN, BIAS_D2TABLE = 0, 1, 2, 3, 4

# content(q, k) -> ContentTables: the parts of a spec that depend on q and k (computed per call)
ContentFn = Callable[[torch.Tensor, torch.Tensor], "ContentTables"]


@dataclass(eq=False)
class ContentTables:
    """Per-call tables. group: (group table (Bt, Ht, Gq, Gk) bool, q groups (N,), k groups (Nk,)).
    polyline: (row table (Bt, Ht, 2, rows·cols), column table (Bt, Ht, 2, rows·cols)) float64,
    natural-log units; index 0 the inclusive prefix sums, 1 the exclusive ones. Heads are kv heads."""

    group: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    polyline: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(eq=False)
class KernelSpec:
    name: str  # the variant spec string (cache key, messages)
    mask: int = MASK_NONE
    bias: int = BIAS_NONE
    paths: int = 1  # 2: polyline's two softmaxes
    causal: bool = False  # the context's causal mask (self-attention only)
    ints: tuple[int, int, int, int] = (0, 0, 0, 0)  # P0..P3 of the mask rule
    head_coef: Callable[[int], torch.Tensor] | None = None  # H -> float64 (H,): bias coefficient per query head
    d2_table: torch.Tensor | None = None  # float64 (T,): bias by squared cell distance (mixture Gaussian)
    content: ContentFn | None = None  # q, k -> ContentTables
    zero_heads: tuple[int, ...] = ()
    uses_grid: bool = False  # the mask or bias reads grid cells

    @property
    def key(self) -> tuple:
        return (self.name, self.mask, self.bias, self.paths, self.causal, self.ints)

    @classmethod
    def block_sparse(cls, table: torch.Tensor, block: int | tuple[int, int], *, causal: bool = False,
                     name: str = "block_sparse") -> KernelSpec:
        """Attention restricted to a coarse block table (H or 1, nQt, nKt) bool at `block` tokens per cell."""
        tq, tk = (block, block) if isinstance(block, int) else block
        tbl = table.bool()
        if tbl.dim() == 2:
            tbl = tbl[None]
        tbl = tbl[None]  # (1, Ht, nQt, nKt)

        def content(q, k):
            dev = q.device
            return ContentTables(group=(tbl.to(dev), torch.arange(q.shape[2], device=dev) // tq,
                                        torch.arange(k.shape[2], device=dev) // tk))

        return cls(name=f"{name}:{tq}x{tk}", mask=MASK_GROUP, causal=causal, content=content)


def kernel_spec(variant: Variant, ctx: TokenContext) -> KernelSpec | None:
    """The kernel switches for `variant` on `ctx`, or None when the Triton kernels do not cover it."""
    try:
        variant.check(ctx)
    except ValueError:
        return None
    builder = _BUILDERS.get(variant.name)
    if builder is None:
        return None
    values = variant.resolved(ctx)
    spec = builder(variant, values, ctx)
    if spec is None:
        return None
    spec.causal = ctx.causal
    spec.name = variant.spec()
    if spec.uses_grid and ctx.grid is None:
        return None
    return spec


# ---------------------------------------------------------------- builders, one per variant name


def _full(v, values, ctx):
    return KernelSpec("")


def _sliding(v, values, ctx):
    return KernelSpec("", mask=MASK_SLIDING, ints=(values["w"], values["sinks"], 0, 0))


def _strided(v, values, ctx):
    return KernelSpec("", mask=MASK_STRIDED, ints=(values["l"], 0, 0, 0))


def _fixed(v, values, ctx):
    return KernelSpec("", mask=MASK_FIXED, ints=(values["l"], values["c"], 0, 0))


def _dilated(v, values, ctx):
    return KernelSpec("", mask=MASK_DILATED, ints=(values["w"] * values["d"], values["d"], 0, 0))


def _window_2d(v, values, ctx):
    rows, cols = ctx.grid
    shift = values["M"] // 2 if values["shift"] else 0
    return KernelSpec("", mask=MASK_WINDOW2D, ints=(values["M"], shift, rows, cols), uses_grid=True)


def _neighborhood(v, values, ctx):
    return KernelSpec("", mask=MASK_NEIGHBORHOOD, ints=(values["k"], 0, 0, 0), uses_grid=True)


def _star(v, values, ctx):
    return KernelSpec("", mask=MASK_STAR, ints=(values["b"], values["q_tokens"], ctx.n, 0))


def retention_log_gamma(a: float, b: float, n_heads: int):
    """H -> log γ_h for h = 0..H−1, float64: the variant's own schedule (n_heads is the context's count)."""

    def coef(heads: int) -> torch.Tensor:
        return score_mods.retention_log_gamma(torch.arange(heads, dtype=torch.float64), a, b, n_heads)

    return coef


def _decay_1d(v, values, ctx):
    return KernelSpec("", bias=BIAS_DECAY1D, head_coef=retention_log_gamma(values["a"], values["b"], ctx.n_heads))


def _manhattan(v, values, ctx):
    return KernelSpec("", bias=BIAS_MANHATTAN, head_coef=retention_log_gamma(values["a"], values["b"], ctx.n_heads),
                      uses_grid=True)


def _gaussian(v, values, ctx):
    sigmas, log_weights, lam = v.mixture, v.log_weights, values["lam"]
    if len(sigmas) == 1 and log_weights[0] == 0.0:
        coef = score_mods.gaussian_coefficient(sigmas[0], lam)
        same_for_all = lambda heads: torch.full((heads,), coef, dtype=torch.float64)  # noqa: E731
        return KernelSpec("", bias=BIAS_GAUSSIAN, head_coef=same_for_all, uses_grid=True)
    rows, cols = ctx.grid
    d2 = torch.arange((rows - 1) ** 2 + (cols - 1) ** 2 + 1, dtype=torch.float64)
    terms = torch.stack([lw + score_mods.gaussian_coefficient(s, lam) * d2 for s, lw in zip(sigmas, log_weights)])
    return KernelSpec("", bias=BIAS_D2TABLE, d2_table=torch.logsumexp(terms, dim=0), uses_grid=True)


def _polyline(v, values, ctx):
    def content(q, k):
        log_alpha, log_beta = v.log_decays(k, ctx.to(k.device))  # (1|B, 1|Hkv, rows, cols) float64
        return ContentTables(polyline=polyline_tables(log_alpha, log_beta))

    return KernelSpec("", paths=2, content=content, uses_grid=True)


def polyline_tables(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix sums along rows of log α and along columns of log β, flattened row-major per cell.

    Returns (row table, column table), each (..., 2, rows·cols): [0] inclusive, [1] exclusive sums.
    Moving along row r from column a to b ≥ a sums row[0][r, b] − row[0][r, a]; to b < a it sums
    row[1][r, a] − row[1][r, b] (the token stepped onto counts, the start does not).
    """
    along_row = log_alpha.cumsum(-1)
    along_col = log_beta.cumsum(-2)
    row = torch.stack([along_row, along_row - log_alpha], dim=-3).flatten(-2)
    col = torch.stack([along_col, along_col - log_beta], dim=-3).flatten(-2)
    return row, col


def _block_topk(v, values, ctx):
    from kernels.variants import content as cv

    b, blocks = values["b"], values["blocks"]

    def content(q, k):
        N, Nk, dev = q.shape[2], k.shape[2], q.device
        q_block, k_block = torch.arange(N, device=dev) // b, torch.arange(Nk, device=dev) // b
        nq, nkb = -(-N // b), -(-Nk // b)
        q_mean, _ = cv.group_mean(q, q_block, nq)  # (B, H, nq, D)
        k_mean, _ = cv.group_mean(k, k_block, nkb)  # (B, Hkv, nkb, D)
        k_mean = k_mean.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        pooled = torch.matmul(q_mean, k_mean.transpose(-1, -2))
        qb, kb = torch.arange(nq, device=dev)[:, None], torch.arange(nkb, device=dev)[None, :]
        forced = (kb == qb) | (kb == 0)
        pooled = pooled.masked_fill(forced, float("inf"))
        if ctx.causal and N == Nk:
            pooled = pooled.masked_fill(kb > qb, float("-inf"))
        chosen = cv.top_k_mask(pooled, blocks) | forced
        return ContentTables(group=(chosen, q_block, k_block))

    return KernelSpec("", mask=MASK_GROUP, content=content)


def _routing_2d(v, values, ctx):
    from kernels.variants import content as cv

    S, top = values["S"], values["k"]

    def content(q, k):
        if k.shape[2] != q.shape[2]:
            return None
        dev = q.device
        region, n_regions = cv.grid_regions(ctx, S)
        region = region.to(dev)
        q_mean, _ = cv.group_mean(q, region, n_regions)
        k_mean, _ = cv.group_mean(k, region, n_regions)
        k_mean = k_mean.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        affinity = torch.matmul(q_mean, k_mean.transpose(-1, -2))
        if ctx.causal:
            later = torch.ones(n_regions, n_regions, dtype=torch.bool, device=dev).triu(1)
            affinity = affinity.masked_fill(later, float("-inf"))
        routed = cv.top_k_mask(affinity, top)
        return ContentTables(group=(routed, region, region))

    return KernelSpec("", mask=MASK_GROUP, content=content)


def _head_ablation(v, values, ctx):
    return KernelSpec("", zero_heads=tuple(v.ablated_heads(ctx.layer, ctx.n_heads)))


_BUILDERS: dict[str, Callable[[Variant, dict, TokenContext], KernelSpec | None]] = {
    "full": _full,
    "sliding_window": _sliding,
    "strided": _strided,
    "fixed": _fixed,
    "dilated_window": _dilated,
    "window_2d": _window_2d,
    "neighborhood_2d": _neighborhood,
    "star": _star,
    "decay_1d": _decay_1d,
    "manhattan_decay": _manhattan,
    "gaussian_2d": _gaussian,
    "polyline_path": _polyline,
    "block_topk": _block_topk,
    "routing_2d": _routing_2d,
    "head_ablation": _head_ablation,
}

SUPPORTED = tuple(_BUILDERS)
