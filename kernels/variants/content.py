"""Family (b) of shared/VARIANTS.md: content-dependent sparsity — which keys a query keeps
depends on the scores themselves (entries 8–13).

The helpers at the top (group means, the global rows and columns of special tokens, a stable
top-k mask) are shared with `approx.py`. Every rule here only removes keys: the attention path
(kernels/reference.py) ANDs what a rule keeps with what the model's own mask allows.

Conventions of the whole family:
- Special tokens of a ViT (CLS, registers, ...) stay global: a special query keeps every key
  the model allows, and every query keeps the special keys, on top of what the rule selects.
- Causal models: every rule is applied after the causal mask, so no query ever attends to a
  future key. The pooled rules (routing_2d, block_topk) average the queries of a block, so the
  *choice* of blocks for row i may depend on later queries of its own block, as in the papers.
- A row left with no key gives a zero output and empty=True.
- Calibrated variants (top_theta, dam) set `needs_calibration = True` and implement
  `calibrate(q0, q1, probs, scores, ctx) -> dict[str, Tensor]`: partial statistics of one query
  chunk of a calibration pass under full attention. The framework sums these dicts over chunks
  (and calibration inputs) per layer into `ctx.calibration[layer]`; the variant reads them back.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kernels.context import TokenContext
from kernels.core import NEG_INF, softmax_lse
from kernels.kernel_form import MASK_GROUP, ContentTables, KernelSpec
from kernels.variants.base import Param, Variant, VariantError
from kernels.variants.registry import register

ALL_KINDS = frozenset({"vit", "causal", "bidirectional"})


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def group_mean(x: torch.Tensor, group: torch.Tensor, n_groups: int, weight: torch.Tensor | None = None):
    """Mean of the tokens of each group, O(N). x (B,H,N,D); group (N,) long in [0, n_groups) or -1
    (token left out); weight (B,H,N) bool/float or None. Returns (mean (B,H,G,D), count (B,H,G));
    an empty group has mean 0 and count 0."""
    B, H, N, D = x.shape
    sel = (group >= 0).nonzero().squeeze(-1)
    idx = group[sel]
    w = torch.ones(1, 1, N, device=x.device) if weight is None else weight.float()
    w = w.expand(B, H, N)[:, :, sel]
    total = x.new_zeros(B, H, n_groups, D, dtype=torch.float32).index_add_(2, idx, x[:, :, sel].float() * w[..., None])
    count = x.new_zeros(B, H, n_groups, dtype=torch.float32).index_add_(2, idx, w)
    return total / count.clamp_min(1e-30)[..., None], count


def global_keep(ctx: TokenContext, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor | None:
    """bool (1, 1, c, w): True where the query or the key is a special token (they stay global);
    None when the context has no special token. kv_idx: the keys (w,), positions of the context."""
    special = ctx.special.to(q_idx.device)
    if not bool(special.any()):
        return None
    return (special[q_idx][:, None] | special[kv_idx][None, :])[None, None]


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool like scores: the k largest finite entries of each row (last axis).

    Ties are broken by position (the earlier entry wins: a stable sort), so exactly
    min(k, number of finite entries) are kept."""
    k = min(k, scores.shape[-1])
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True)
    return keep & (scores > NEG_INF)


def pooled_keep_fn(table: torch.Tensor, q_group: torch.Tensor, k_group: torch.Tensor, ctx: TokenContext):
    """keep(q0, q1) -> bool (B, H, c, Nk) from a group-to-group table (B, H, Gq, Gk): token i keeps key j
    when table[group_i, group_j]; special tokens stay global."""
    kv_idx = torch.arange(k_group.shape[0], device=table.device)

    def keep(q0: int, q1: int):
        rows = table[:, :, q_group[q0:q1].clamp_min(0)]  # (B,H,c,Gk)
        m = rows[:, :, :, k_group.clamp_min(0)]  # (B,H,c,Nk)
        glob = global_keep(ctx, torch.arange(q0, q1, device=table.device), kv_idx)
        return m if glob is None else m | glob

    return keep


def _calibration(variant: Variant, ctx: TokenContext, names: tuple[str, ...]) -> dict:
    stats = ctx.calibration.get(ctx.layer) if ctx.calibration else None
    if not stats or any(name not in stats for name in names):
        raise VariantError(
            f"{variant.name} needs a calibration pass: run the model once under full attention with this "
            f"variant's calibrate() (statistics {', '.join(names)} for layer {ctx.layer} are missing)"
        )
    return stats


# ---------------------------------------------------------------------------------------------
# 8. topk
# ---------------------------------------------------------------------------------------------


@register
class TopK(Variant):
    """Top-k attention: each query keeps its k largest scores s_ij among the keys it may see.

    As in AxFormer's sparse hard attention (Nagarajan, Sen, Stevens & Raghunathan, 2020,
    arXiv:2010.03688), IceFormer (Mao, Ester & Li, 2024, arXiv:2405.02842) and the oracle of
    Sparsifiner (Wei et al., 2023, arXiv:2303.13755). Masked keys are
    removed before the selection (causal: never a future key). Ties at the k-th score go to the
    earlier key, so a row keeps exactly min(k, allowed keys) keys. On a ViT the special tokens stay
    global: they are kept by every query in addition to the k patches, and a special query keeps
    every key. k is auto by default: 64, or ⌈N/4⌉ on a ViT.
    """

    name = "topk"
    family = "content"
    applies_to = ALL_KINDS
    params = (Param("k", int, None, "keys kept per query", low=1, auto="64; ViT ⌈N/4⌉"),)

    def auto_value(self, name: str, ctx: TokenContext):
        return math.ceil(ctx.n / 4) if ctx.kind == "vit" else 64

    def row_mask(self, s, q_idx, kv_idx, ctx):
        k = self.resolved(ctx)["k"]
        glob = global_keep(ctx, q_idx, kv_idx)
        if glob is None:
            return top_k_mask(s, k)
        special = ctx.special[kv_idx]  # special keys are kept anyway: they do not use up the k
        return top_k_mask(s.masked_fill(special, NEG_INF), k) | glob


# ---------------------------------------------------------------------------------------------
# 9. top_theta
# ---------------------------------------------------------------------------------------------


@register
class TopTheta(Variant):
    """Top-θ attention (Berestizshevsky, Andri & Cavigelli, 2025, arXiv:2502.08363).

    Keep s_ij ≥ θ_(layer,head). θ is calibrated per head under full attention as the mean, over
    calibration rows, of each row's k-th largest score (rows with fewer than k allowed keys and
    special-token rows are left out; no such row at all gives θ = -inf: nothing is pruned).
    Calibration statistics (summed over chunks and inputs), per layer:
      "kth_sum"  (H,) float64  sum of the rows' k-th largest scores
      "kth_rows" (H,) float64  number of rows counted
    so θ_h = kth_sum_h / kth_rows_h. They belong to the k used in the calibration pass.

    compensate=False: plain softmax over the kept keys.
    compensate=True (both compensations of the paper), with m_i = max(max_j s_ij, θ), the pruned
    set P_i (allowed keys with s_ij < θ) and n_i = |P_i|:
      softmax-denominator compensation  Z_i = Σ_kept exp(s_ij − m_i) + n_i·exp(θ − m_i),
                                        p_ij = exp(s_ij − m_i) / Z_i for kept keys;
      V-mean compensation               out_i = Σ_kept p_ij v_j + M_i · mean_{j∈P_i} v_j,
                                        M_i = n_i·exp(θ − m_i) / Z_i (the estimated pruned mass).
    Together they equal a softmax of max(s_ij, θ) over the allowed keys, which is how it is
    computed; the probabilities handed out spread M_i evenly over P_i (so out = probs @ v and
    rows sum to 1), while the scores handed to sinks show pruned keys as -inf. The lse is
    log Z_i + m_i. A row whose every key falls below θ is empty without compensation and
    averages V over its allowed keys with it. Special tokens stay global (never pruned).
    """

    name = "top_theta"
    family = "content"
    applies_to = ALL_KINDS
    needs_calibration = True
    params = (
        Param("k", int, 64, "rank whose mean score per head sets θ", low=1),
        Param("compensate", bool, True, "softmax-denominator and V-mean compensation of pruned keys"),
    )

    def calibrate(self, q0, q1, probs, scores, ctx):
        kth = torch.topk(scores, min(self.k, scores.shape[-1]), dim=-1).values[..., -1]  # (B,H,c)
        counted = torch.isfinite(kth) & (scores.shape[-1] >= self.k)
        counted = counted & ~ctx.special.to(scores.device)[q0:q1]
        return {
            "kth_sum": torch.where(counted, kth, 0.0).double().sum(dim=(0, 2)),
            "kth_rows": counted.double().sum(dim=(0, 2)),
        }

    def thresholds(self, ctx: TokenContext, heads: int) -> torch.Tensor:
        """θ per head (H,) float32 from the calibration of ctx.layer."""
        stats = _calibration(self, ctx, ("kth_sum", "kth_rows"))
        total, rows = stats["kth_sum"].double(), stats["kth_rows"].double()
        if total.shape != (heads,):
            raise VariantError(f"top_theta: calibration of layer {ctx.layer} has {total.shape[0]} heads, not {heads}")
        return torch.where(rows > 0, total / rows.clamp_min(1), float("-inf")).float()

    def attend(self, call):
        theta = self.thresholds(call.ctx, call.q.shape[1]).to(call.q.device)[None, :, None, None]  # (1,H,1,1)
        ctx = call.dctx

        def normalise(s, q0, q1, kv_idx, sink):
            pruned = (s < theta) & (s > NEG_INF)
            glob = global_keep(ctx, torch.arange(q0, q1, device=s.device), kv_idx)
            if glob is not None:
                pruned = pruned & ~glob
            shown = s.masked_fill(pruned, NEG_INF)
            lifted = torch.where(pruned, theta.expand_as(s), s) if self.compensate else shown
            p, lse, _ = softmax_lse(lifted, sink)
            return p, shown, lse

        return call.softmax(normalise=normalise)


# ---------------------------------------------------------------------------------------------
# 10. routing_2d
# ---------------------------------------------------------------------------------------------


def grid_regions(ctx: TokenContext, S: int) -> tuple[torch.Tensor, int]:
    """Region of each token (N,) long (-1 for special tokens) and the number of regions.

    ViT: the grid is cut into min(S, rows) × min(S, cols) near-equal regions (region row
    ⌊r·S_r/rows⌋). 1D: the sequence is cut into min(S², N) near-equal contiguous chunks."""
    if ctx.kind == "vit":
        rows, cols = ctx.grid
        s_r, s_c = min(S, rows), min(S, cols)
        region = (ctx.row * s_r // rows) * s_c + ctx.col * s_c // cols
        return torch.where(ctx.special, -1, region), s_r * s_c
    n_regions = min(S * S, ctx.n)
    region = torch.arange(ctx.n) * n_regions // ctx.n
    return torch.where(ctx.special, -1, region), n_regions


@register
class Routing2D(Variant):
    """Bi-level routing attention of BiFormer (Zhu et al., 2023, arXiv:2303.08125).

    The grid is split into S×S regions (fewer when the grid is smaller than S; regions are
    near-equal when S does not divide it). Q and K are averaged per region, the region affinity
    is Q̄ K̄ᵀ, each region keeps its top-k regions (ties: the earlier region), and a token attends
    to every token of the kept regions. Special tokens stay global.
    1D analogue (language models): regions are min(S², N) contiguous near-equal chunks of the
    sequence; on a causal model a chunk may only route to itself and earlier chunks, and the
    causal mask still applies inside a chunk.
    """

    name = "routing_2d"
    family = "content"
    applies_to = ALL_KINDS
    params = (
        Param("S", int, 7, "regions per side (1D: S² chunks)", low=1),
        Param("k", int, 4, "regions kept per region", low=1),
    )

    def routes(self, q, k, ctx: TokenContext):
        """(routed (B, H, R, R) bool, region of each token, the same for keys). k may carry fewer (kv) heads."""
        if k.shape[2] != q.shape[2]:
            raise VariantError("routing_2d needs self-attention (as many keys as queries)")
        region, n_regions = grid_regions(ctx, self.S)
        region = region.to(q.device)
        q_mean, _ = group_mean(q, region, n_regions)  # (B,H,R,D)
        k_mean, _ = group_mean(k, region, n_regions)
        k_mean = k_mean.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        affinity = torch.matmul(q_mean, k_mean.transpose(-1, -2))  # (B,H,R,R)
        if ctx.causal:  # a chunk never routes to a later chunk
            later = torch.ones(n_regions, n_regions, dtype=torch.bool, device=q.device).triu(1)
            affinity = affinity.masked_fill(later, NEG_INF)
        return top_k_mask(affinity, self.k), region, region

    def attend(self, call):
        return call.softmax(keep=pooled_keep_fn(*self.routes(call.q, call.k, call.dctx), call.dctx))

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        def content(q, k):
            return ContentTables(group=self.routes(q, k, ctx.to(q.device))) if k.shape[2] == q.shape[2] else None

        return KernelSpec(mask=MASK_GROUP, content=content)


# ---------------------------------------------------------------------------------------------
# 11. block_topk
# ---------------------------------------------------------------------------------------------


@register
class BlockTopK(Variant):
    """Block-sparse attention chosen from pooled scores: MRA (Zeng et al., 2022, arXiv:2207.10284)
    and MInference's block-sparse pattern (Jiang et al., 2024, arXiv:2407.02490).

    Q and K are mean-pooled over contiguous blocks of b tokens (the last block may be shorter);
    each query block keeps the `blocks` key blocks with the largest pooled score Q̄ K̄ᵀ (ties: the
    earlier block), always including its diagonal block and block 0 (these count towards
    `blocks`; if `blocks` is smaller, both are still kept). Attention inside the kept blocks is
    exact. Causal: key blocks after the query block are never chosen and the token-level causal
    mask still applies. Special tokens stay global.
    """

    name = "block_topk"
    family = "content"
    applies_to = ALL_KINDS
    params = (
        Param("b", int, 64, "block size in tokens", low=1),
        Param("blocks", int, 8, "key blocks kept per query block", low=1),
    )

    def chosen(self, q, k, ctx: TokenContext):
        """(chosen (B, H, nq, nkb) bool, block of each query, block of each key). k may carry fewer (kv) heads."""
        N, Nk, dev = q.shape[2], k.shape[2], q.device
        q_block, k_block = torch.arange(N, device=dev) // self.b, torch.arange(Nk, device=dev) // self.b
        nq, nkb = -(-N // self.b), -(-Nk // self.b)
        q_mean, _ = group_mean(q, q_block, nq)
        k_mean, _ = group_mean(k, k_block, nkb)
        k_mean = k_mean.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        pooled = torch.matmul(q_mean, k_mean.transpose(-1, -2))  # (B,H,nq,nkb)
        qb, kb = torch.arange(nq, device=dev)[:, None], torch.arange(nkb, device=dev)[None, :]
        forced = (kb == qb) | (kb == 0)
        pooled = pooled.masked_fill(forced, float("inf"))
        if ctx.causal and N == Nk:
            pooled = pooled.masked_fill(kb > qb, NEG_INF)
        return top_k_mask(pooled, self.blocks) | forced, q_block, k_block

    def attend(self, call):
        return call.softmax(keep=pooled_keep_fn(*self.chosen(call.q, call.k, call.dctx), call.dctx))

    def kernel_form(self, ctx: TokenContext) -> KernelSpec:
        return KernelSpec(mask=MASK_GROUP, content=lambda q, k: ContentTables(group=self.chosen(q, k, ctx)))


# ---------------------------------------------------------------------------------------------
# 12. entmax
# ---------------------------------------------------------------------------------------------


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last axis (Martins & Astudillo, 2016), exact by sorting; -inf = masked.
    Rows with no finite entry give zeros. Computed on z − max z (sparsemax is shift invariant), so the
    largest entry is exactly 0 and always in the support, however large the scores are."""
    dead = torch.isneginf(z).all(-1, keepdim=True)
    z = z.masked_fill(dead, 0.0)
    z = z - z.amax(-1, keepdim=True)
    ranked = torch.sort(z, dim=-1, descending=True).values
    cumsum = ranked.cumsum(-1)
    rank = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    support = (1 + rank * ranked > cumsum).sum(-1, keepdim=True).clamp_min(1)  # size of the support
    tau = (cumsum.gather(-1, support - 1) - 1) / support
    return torch.clamp(z - tau, min=0.0).masked_fill(dead, 0.0)


def entmax_bisect(z: torch.Tensor, alpha: float, n_iter: int = 50) -> torch.Tensor:
    """α-entmax over the last axis for 1 < α (Peters, Niculae & Martins, 2019), by bisection on τ:
    p_j = [(α−1)z_j − τ]_+^(1/(α−1)) with Σ p = 1; -inf = masked; rows with no finite entry give zeros."""
    dead = torch.isneginf(z).all(-1, keepdim=True)
    z = z.masked_fill(dead, 0.0)
    x = (alpha - 1) * (z - z.amax(-1, keepdim=True))  # max is 0
    n = torch.isfinite(x).sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
    lo = torch.full_like(n, -1.0)  # Σ p ≥ 1 here: the max alone gives 1
    hi = -(1.0 / n) ** (alpha - 1)  # Σ p ≤ 1 here: every entry gives at most 1/n
    power = 1.0 / (alpha - 1)
    for _ in range(n_iter):
        tau = (lo + hi) / 2
        mass = torch.clamp(x - tau, min=0.0).pow(power).sum(-1, keepdim=True)
        too_much = mass >= 1
        lo = torch.where(too_much, tau, lo)
        hi = torch.where(too_much, hi, tau)
    p = torch.clamp(x - (lo + hi) / 2, min=0.0).pow(power)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    return p.masked_fill(dead, 0.0)


@register
class Entmax(Variant):
    """α-entmax in place of softmax: Adaptively Sparse Transformers (Correia, Niculae & Martins,
    2019, arXiv:1909.00015), α-entmax of Peters, Niculae & Martins (2019, arXiv:1905.05702).

    entmax_α(s)_j = [(α−1)s_j − τ]_+^(1/(α−1)), τ such that the row sums to 1, over the allowed
    keys. α=1 is softmax exactly, α=2 sparsemax (Martins & Astudillo, 2016, arXiv:1602.02068),
    computed exactly by sorting; 1<α<2 by 50 bisection steps on τ in float32 (the bracket
    [max−1, max−(1/n)^(α−1)] shrinks below float32 resolution), then renormalised.
    The lse handed out is still the log-sum-exp of the scores.
    """

    name = "entmax"
    family = "content"
    applies_to = ALL_KINDS
    params = (Param("alpha", float, 1.5, "1 = softmax, 2 = sparsemax", low=1.0, high=2.0),)

    def row_probs(self, s, q_idx, kv_idx, ctx):
        if self.alpha == 1.0:
            return softmax_lse(s)[0]
        if self.alpha == 2.0:
            return sparsemax(s)
        return entmax_bisect(s, self.alpha)


# ---------------------------------------------------------------------------------------------
# 13. dam
# ---------------------------------------------------------------------------------------------

DAM_MAX_N = 2048  # the calibration keeps H×N×N float32 per layer
BOXCOX_FIT_POINTS = 20000  # λ is fitted on this many evenly spaced quantiles of the entries


def boxcox_lambda(x: np.ndarray) -> float:
    """Maximum-likelihood Box-Cox λ (scipy) of positive values, fitted on at most
    BOXCOX_FIT_POINTS evenly spaced order statistics: deterministic and fast on N² entries."""
    from scipy.stats import boxcox_normmax

    x = np.sort(x)
    if x.size > BOXCOX_FIT_POINTS:
        x = x[np.linspace(0, x.size - 1, BOXCOX_FIT_POINTS).round().astype(np.int64)]
    if x[0] == x[-1]:
        return 1.0  # constant data: any λ; 1 keeps it linear
    return float(boxcox_normmax(x, method="mle"))


def boxcox(x: torch.Tensor, lam: float) -> torch.Tensor:
    return torch.log(x) if lam == 0 else (x.pow(lam) - 1) / lam


def dam_mask(mean_attn: torch.Tensor, tau: float) -> torch.Tensor:
    """DAM's keep mask (H,N,N) bool from the mean calibration attention (H,N,N).

    Per head: Box-Cox transform of the positive entries (λ fitted per head, `boxcox_lambda`),
    min-max normalised to [0, 1] over those entries, keep ≥ tau. Entries that got no attention
    at all in calibration (future keys of a causal model) are masked; the diagonal is always kept."""
    H, N, _ = mean_attn.shape
    keep = torch.zeros(H, N, N, dtype=torch.bool)
    for h in range(H):
        a = mean_attn[h].double().cpu()
        positive = a > 0
        if not bool(positive.any()):
            continue
        y = boxcox(a[positive], boxcox_lambda(a[positive].numpy()))
        lo, hi = y.min(), y.max()
        level = (y - lo) / (hi - lo) if hi > lo else torch.ones_like(y)
        keep[h][positive] = level >= tau
    return keep | torch.eye(N, dtype=torch.bool)


@register
class DAM(Variant):
    """DAM, dynamic attention mask (Zhang, Fan, Sha, Huang & Feng, 2025, arXiv:2506.11104;
    ACL Findings 2025).

    Per head, the attention averaged over a calibration input is Box-Cox transformed (λ fitted
    per head by maximum likelihood, scipy, on the positive entries; deterministic), min-max
    normalised to [0, 1], and the entries ≥ tau are kept as a static mask for that layer and head.
    Our choices where the catalogue is silent: entries with zero calibration attention are masked
    and excluded from the fit (the paper clamps them to a small ε instead); the diagonal is
    always kept so no row is left empty. Calibration statistics, per layer:
      "attn_sum"  (H, N, N) float32  sum over calibration inputs of the attention probabilities
      "attn_rows" (N,)      float64  how many inputs contributed to each query row
    A target shorter than the calibration input uses the top-left N×N crop (positions line up
    in a causal model); a longer one is refused. Calibration is refused above DAM_MAX_N tokens.
    """

    mask_depends_on_layer = True  # one calibrated mask per layer
    name = "dam"
    family = "content"
    applies_to = frozenset({"causal"})
    needs_calibration = True
    params = (Param("tau", float, 0.1, "keep normalised entries at or above this level", low=0.0, high=1.0),)

    def __init__(self, **values):
        super().__init__(**values)
        self._masks: dict = {}  # (layer, N) -> (attn_sum it came from, mask): the fit runs once

    def calibrate(self, q0, q1, probs, scores, ctx):
        B, H, _, Nk = probs.shape
        if ctx.n > DAM_MAX_N:
            raise VariantError(f"dam: calibration input has {ctx.n} tokens; at most {DAM_MAX_N} are supported")
        total = probs.new_zeros(H, ctx.n, Nk, dtype=torch.float32)
        total[:, q0:q1] = probs.float().sum(0)
        rows = torch.zeros(ctx.n, dtype=torch.float64, device=probs.device)
        rows[q0:q1] = B
        return {"attn_sum": total, "attn_rows": rows}

    def mask_table(self, ctx: TokenContext) -> torch.Tensor:
        """The keep mask (H, N, N) bool for ctx.layer and ctx.n."""
        stats = _calibration(self, ctx, ("attn_sum", "attn_rows"))
        total, rows = stats["attn_sum"], stats["attn_rows"]
        n_cal = total.shape[-1]
        if ctx.n > n_cal:
            raise VariantError(
                f"dam: calibrated on {n_cal} tokens, the input has {ctx.n}; calibrate on an input at least as long"
            )
        cached = self._masks.get((ctx.layer, ctx.n))
        if cached is not None and cached[0] is total:
            return cached[1]
        n = ctx.n
        mean_attn = total[:, :n, :n].double().cpu() / rows[:n].double().cpu().clamp_min(1)[None, :, None]
        mask = dam_mask(mean_attn, self.tau)
        self._masks[(ctx.layer, n)] = (total, mask)
        return mask

    def mask_mod(self, ctx: TokenContext):
        table = self.mask_table(ctx).to(ctx.special.device)

        def keep(b, h, q_idx, kv_idx):
            return table[h, q_idx, kv_idx]

        return keep
