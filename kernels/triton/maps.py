"""The maps pass: pooled maps, exact tiles and row statistics from q, k and the LSE, in one pass.

Given the log-sum-exp of every row (from the forward kernel), each probability is recomputed
locally, p_ij = exp(t_ij − lse_i) with t the masked, biased score (polyline_path: the mean of its
two softmaxes, from the two path LSEs), so no pass needs a running normaliser and every tile is
final as soon as it is computed. Per (query block, batch·head) program, over the listed key
blocks of the block mask only (masked tiles hold no probability):

  row statistics (B, H, N), definitions of kernels/maps.py
    entropy   −Σ_j p log p  (0·log 0 = 0)
    distance  Σ_j p·d(i, j), d = |i − j| (sequences) or the Euclidean cell distance (ViT patches; 0 if
              either token is special)
    sink      p_i0
    maxp      max_j p_ij
  pooled map (B, H, R_q, R_k): the MEAN of p over the tile of bins bin(i) = ⌊i·R/N⌋ (R = min(R, N));
              each compute tile is reduced to its few bins by two one-hot matmuls
              (p · onehot_k, then onehot_qᵀ · that) and added with atomics; means on the host
  exact tile  p[q0:q1, k0:k1] written as it goes (zero where masked)

Launchers: `triton_maps` (everything, any subset) and `triton_exact_tile` (the signature of
kernels.maps.exact_tile). Same shapes and GQA rule as the forward kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.context import TokenContext
from kernels.maps import STATS, pool_bins
from kernels.triton import spec as S
from kernels.triton.attention_fwd import (
    BIAS_D2_TABLE,
    BIAS_NONE,
    LN2_C,
    MASK_GROUP,
    SCORE_SOFTCAP,
    _bias,
    _check_inputs,
    _dot_precision,
    _element_keep,
    _kernel_args,
    _last_dim_contiguous,
    _polyline_bias,
    _softcap,
    _sparse,
    _upcast,
    interpreting,
    prepare,
    triton_attention,
)
from kernels.variants.base import Variant, VariantError


@triton.jit
def _exact_dot(x, onehot, SPLIT: tl.constexpr, LEFT: tl.constexpr = False):
    """x @ onehot (or onehotᵀ-side: onehot @ x when LEFT) for float32 x ≥ 0 and a 0/1 matrix, to ~16 bits.

    SPLIT = 1: x = hi + lo in bfloat16 (GPU: two tensor-core products, exact one-hot operand);
    SPLIT = 2: the same with float16 (exercises this path under the interpreter, whose bfloat16
    dot is unusable); SPLIT = 0: one float32 product (interpreter).
    """
    if SPLIT == 0:
        oh = onehot.to(tl.float32)
        if LEFT:
            out = tl.dot(oh, x, input_precision="ieee")
        else:
            out = tl.dot(x, oh, input_precision="ieee")
    else:
        if SPLIT == 1:
            hi = x.to(tl.bfloat16)
            lo = (x - hi.to(tl.float32)).to(tl.bfloat16)
            oh = onehot.to(tl.bfloat16)
        else:
            hi = x.to(tl.float16)
            lo = (x - hi.to(tl.float32)).to(tl.float16)
            oh = onehot.to(tl.float16)
        if LEFT:
            out = tl.dot(oh, lo, acc=tl.dot(oh, hi))
        else:
            out = tl.dot(lo, oh, acc=tl.dot(hi, oh))
    return out


@triton.jit
def _maps_tile(ent, dist, sink, maxp, q, start_n, lse2, lp1, lp2,
               K, skn, offs_d, d_ok, qi, rq, cq, spq, gq_off, trq0, trq1, tcq0, tcq1,
               Special, Row, Col, KValid, GTab, GK, Coef_h, D2, TR, TC, RC, GRID_W,
               PoolBH, Rq, Rk, rb0, local_r, TileBH, TQ0, TQ1, TK0, TK1,
               N, NK, qk_scale, CAP2, P0, P1, P2, P3,
               PARTIAL: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, RULE: tl.constexpr,
               RULE_GRID: tl.constexpr, N_INTS: tl.constexpr, SCORE: tl.constexpr, BIAS: tl.constexpr,
               PATHS: tl.constexpr, HAS_SPECIAL: tl.constexpr, HAS_KPAD: tl.constexpr, HAS_GRID: tl.constexpr,
               DIST_2D: tl.constexpr, WANT_STATS: tl.constexpr, WANT_POOLED: tl.constexpr, WANT_TILE: tl.constexpr,
               DOT_PREC: tl.constexpr, POOL_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               NBQ: tl.constexpr, NBK: tl.constexpr, UPCAST: tl.constexpr):
    """Probabilities of one tile and their contributions to the statistics, the pooled map and the tile."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    kj = offs_n[None, :]
    k_ok = offs_n < NK
    k = tl.load(K + offs_n[:, None] * skn + offs_d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    t = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BM, BN), log2 units
    if SCORE == SCORE_SOFTCAP:
        t = _softcap(t, CAP2)

    rk = kj * 0
    ck = kj
    spk = kj < 0
    if HAS_GRID:
        rk = tl.load(Row + offs_n, mask=k_ok, other=0)[None, :]
        ck = tl.load(Col + offs_n, mask=k_ok, other=0)[None, :]
    if HAS_SPECIAL:
        spk = (tl.load(Special + offs_n, mask=k_ok, other=0) != 0)[None, :]
    if PARTIAL:
        kvalid = kj >= 0
        gk = kj
        if HAS_KPAD:
            kvalid = (tl.load(KValid + offs_n, mask=k_ok, other=0) != 0)[None, :]
        if MASK == MASK_GROUP:
            gk = tl.load(GK + offs_n, mask=k_ok, other=0)[None, :]
        keep = _element_keep(qi, kj, rq, cq, rk, ck, spq, spk, gq_off, gk, kvalid, GTab, N, NK,
                             P0, P1, P2, P3, MASK, RULE, RULE_GRID, N_INTS, IS_CAUSAL, HAS_SPECIAL, HAS_KPAD)
        t = tl.where(keep, t, float("-inf"))

    if PATHS == 2:  # polyline: p = ½·softmax(s + L) + ½·softmax(s + L')
        trk0 = tl.load(TR + rk * GRID_W + ck)
        trk1 = tl.load(TR + RC + rk * GRID_W + ck)
        tck0 = tl.load(TC + rk * GRID_W + ck)
        tck1 = tl.load(TC + RC + rk * GRID_W + ck)
        L1, L2 = _polyline_bias(TR, TC, rq, cq, rk, ck, spq, spk, trq0, trq1, tcq0, tcq1,
                                trk0, trk1, tck0, tck1, RC, GRID_W, HAS_SPECIAL)
        p = 0.5 * tl.math.exp2(t + L1 - lp1[:, None]) + 0.5 * tl.math.exp2(t + L2 - lp2[:, None])
        logp = tl.log(tl.where(p > 0.0, p, 1.0))  # natural log
    else:
        if BIAS != BIAS_NONE:
            t = t + _bias(qi, kj, rq, cq, rk, ck, spq, spk, Coef_h, D2, BIAS, HAS_SPECIAL)
        logp2 = t - lse2[:, None]  # log2 p; −∞ where masked (lse2 = +∞ on empty rows)
        p = tl.math.exp2(logp2)
        logp = tl.where(p > 0.0, logp2, 0.0) * LN2_C

    if WANT_STATS:
        ent -= tl.sum(tl.where(p > 0.0, p * logp, 0.0), 1)
        if DIST_2D:
            dr = (rq - rk).to(tl.float32)
            dc = (cq - ck).to(tl.float32)
            d = tl.sqrt(dr * dr + dc * dc)
            if HAS_SPECIAL:
                d = tl.where(spq | spk, 0.0, d)
        else:
            d = tl.abs(qi - kj).to(tl.float32)
        dist += tl.sum(p * d, 1)
        if start_n == 0:
            sink += tl.sum(tl.where(kj == 0, p, 0.0), 1)
        maxp = tl.maximum(maxp, tl.max(p, 1))
    if WANT_POOLED:
        cb0 = (start_n * Rk) // NK
        local_c = (offs_n * Rk) // NK - cb0  # (BN,) in [0, NBK)
        onehot_k = (local_c[:, None] == tl.arange(0, NBK)[None, :]) & k_ok[:, None]  # (BN, NBK)
        onehot_q = tl.arange(0, NBQ)[:, None] == local_r[None, :]  # (NBQ, BM)
        by_col = _exact_dot(p, onehot_k, POOL_SPLIT)  # (BM, NBK): p summed per key bin
        tile_sum = _exact_dot(by_col, onehot_q, POOL_SPLIT, True)  # (NBQ, NBK): and per query bin
        pr = rb0 + tl.arange(0, NBQ)
        pc = cb0 + tl.arange(0, NBK)
        tl.atomic_add(PoolBH + pr[:, None] * Rk + pc[None, :], tile_sum, mask=(pr[:, None] < Rq) & (pc[None, :] < Rk))
    if WANT_TILE:
        in_tile = (qi >= TQ0) & (qi < TQ1) & (kj >= TK0) & (kj < TK1)
        tl.store(TileBH + (qi - TQ0) * (TK1 - TK0) + (kj - TK0), p, mask=in_tile)
    return ent, dist, sink, maxp


@triton.jit
def _maps_kernel(
    Q, K, Lse, LseP, Stats, Pool, Tile,  # q (B,H,N,D), k (B,Hkv,Nk,D), lse (B·H, N), LseP (2, B·H, N),
    # Stats (4, B·H, N), Pool (B·H, Rq, Rk), Tile (B·H, TQ1−TQ0, TK1−TK0)
    sqb, sqh, sqn, skb, skh, skn,
    KvNum, KvIdx, FullNum, FullIdx, snb, snh, snq, sib, sih, siq,
    Special, Row, Col, KValid, skvb,
    Coef, D2, GTab, GQ, GK, sgb, sgh, sgq,
    TRow, TCol, stb, sth,
    H, N, NK, KV_GROUP, HEAD_DIM, qk_scale, CAP2, P0, P1, P2, P3, RC, GRID_W,
    Rq, Rk, TQ0, TQ1, TK0, TK1, Q_BLOCK0,
    IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, RULE: tl.constexpr, RULE_GRID: tl.constexpr, N_INTS: tl.constexpr,
    SCORE: tl.constexpr, BIAS: tl.constexpr, PATHS: tl.constexpr,
    HAS_SPECIAL: tl.constexpr, HAS_KPAD: tl.constexpr, HAS_GRID: tl.constexpr, DIST_2D: tl.constexpr,
    WANT_STATS: tl.constexpr, WANT_POOLED: tl.constexpr, WANT_TILE: tl.constexpr,
    DOT_PREC: tl.constexpr, POOL_SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SPARSE_M: tl.constexpr, SPARSE_N: tl.constexpr, NBQ: tl.constexpr, NBK: tl.constexpr, UPCAST: tl.constexpr,
):
    """p_ij = 2^(t_ij − lse_i·log2 e) on the visited tiles -> row statistics, pooled sums, exact tile."""
    pid_m = Q_BLOCK0 + tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // KV_GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    Kb = K + b * skb + hk * skh

    lse = tl.load(Lse + pid_bh * N + offs_m, mask=m_ok, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # +∞: p = 0 on empty rows
    lp1 = lse2
    lp2 = lse2
    if PATHS == 2:
        P_STRIDE = tl.num_programs(1) * N
        lp1 = tl.load(LseP + pid_bh * N + offs_m, mask=m_ok, other=float("-inf"))
        lp2 = tl.load(LseP + P_STRIDE + pid_bh * N + offs_m, mask=m_ok, other=float("-inf"))
        lp1 = tl.where(lp1 == float("-inf"), float("inf"), lp1 * 1.4426950408889634)
        lp2 = tl.where(lp2 == float("-inf"), float("inf"), lp2 * 1.4426950408889634)

    qi = offs_m[:, None]
    rq = qi * 0
    cq = qi
    spq = qi < 0
    gq = qi
    if HAS_GRID:
        rq = tl.load(Row + offs_m, mask=m_ok, other=0)[:, None]
        cq = tl.load(Col + offs_m, mask=m_ok, other=0)[:, None]
    if HAS_SPECIAL:
        spq = (tl.load(Special + offs_m, mask=m_ok, other=0) != 0)[:, None]
    if MASK == MASK_GROUP:
        gq = tl.load(GQ + offs_m, mask=m_ok, other=0)[:, None]
    GTab_bh = GTab + b * sgb + h * sgh
    Coef_h = 0.0
    if BIAS != BIAS_NONE:
        if BIAS != BIAS_D2_TABLE:  # a coefficient per head
            Coef_h = tl.load(Coef + h)
    TR = TRow + b * stb + hk * sth
    TC = TCol + b * stb + hk * sth
    trq0 = rq * 0.0
    trq1 = trq0
    tcq0 = trq0
    tcq1 = trq0
    if PATHS == 2:
        trq0 = tl.load(TR + rq * GRID_W + cq)
        trq1 = tl.load(TR + RC + rq * GRID_W + cq)
        tcq0 = tl.load(TC + rq * GRID_W + cq)
        tcq1 = tl.load(TC + RC + rq * GRID_W + cq)

    rb0 = (pid_m * BLOCK_M * Rq) // N
    local_r = tl.where(m_ok, (offs_m * Rq) // N - rb0, NBQ)  # rows past N match no bin
    PoolBH = Pool + pid_bh * Rq * Rk
    TileBH = Tile + pid_bh * (TQ1 - TQ0) * (TK1 - TK0)

    ent = tl.zeros([BLOCK_M], tl.float32)
    dist = tl.zeros([BLOCK_M], tl.float32)
    sink = tl.zeros([BLOCK_M], tl.float32)
    maxp = tl.zeros([BLOCK_M], tl.float32)

    sq = (pid_m * BLOCK_M) // SPARSE_M
    MULT: tl.constexpr = SPARSE_N // BLOCK_N
    num = tl.load(KvNum + b * snb + h * snh + sq * snq)
    idx = KvIdx + b * sib + h * sih + sq * siq
    for it in range(0, num * MULT):
        start_n = tl.load(idx + it // MULT) * SPARSE_N + (it % MULT) * BLOCK_N
        ent, dist, sink, maxp = _maps_tile(
            ent, dist, sink, maxp, q, start_n, lse2, lp1, lp2, Kb, skn, offs_d, d_ok, qi, rq, cq, spq, gq * sgq,
            trq0, trq1, tcq0, tcq1, Special, Row, Col, KValid + b * skvb, GTab_bh, GK, Coef_h, D2, TR, TC, RC,
            GRID_W, PoolBH, Rq, Rk, rb0, local_r, TileBH, TQ0, TQ1, TK0, TK1, N, NK,
            qk_scale, CAP2, P0, P1, P2, P3, True, IS_CAUSAL, MASK, RULE, RULE_GRID, N_INTS, SCORE, BIAS, PATHS,
            HAS_SPECIAL, HAS_KPAD, HAS_GRID, DIST_2D,
            WANT_STATS, WANT_POOLED, WANT_TILE, DOT_PREC, POOL_SPLIT, BLOCK_M, BLOCK_N, NBQ, NBK, UPCAST)
    num = tl.load(FullNum + b * snb + h * snh + sq * snq)
    idx = FullIdx + b * sib + h * sih + sq * siq
    for it in range(0, num * MULT):
        start_n = tl.load(idx + it // MULT) * SPARSE_N + (it % MULT) * BLOCK_N
        ent, dist, sink, maxp = _maps_tile(
            ent, dist, sink, maxp, q, start_n, lse2, lp1, lp2, Kb, skn, offs_d, d_ok, qi, rq, cq, spq, gq * sgq,
            trq0, trq1, tcq0, tcq1, Special, Row, Col, KValid + b * skvb, GTab_bh, GK, Coef_h, D2, TR, TC, RC,
            GRID_W, PoolBH, Rq, Rk, rb0, local_r, TileBH, TQ0, TQ1, TK0, TK1, N, NK,
            qk_scale, CAP2, P0, P1, P2, P3, False, IS_CAUSAL, MASK, RULE, RULE_GRID, N_INTS, SCORE, BIAS, PATHS,
            HAS_SPECIAL, HAS_KPAD, HAS_GRID, DIST_2D,
            WANT_STATS, WANT_POOLED, WANT_TILE, DOT_PREC, POOL_SPLIT, BLOCK_M, BLOCK_N, NBQ, NBK, UPCAST)

    if WANT_STATS:
        STAT_STRIDE = tl.num_programs(1) * N
        base = Stats + pid_bh * N + offs_m
        tl.store(base, ent, mask=m_ok)
        tl.store(base + STAT_STRIDE, dist, mask=m_ok)
        tl.store(base + 2 * STAT_STRIDE, sink, mask=m_ok)
        tl.store(base + 3 * STAT_STRIDE, maxp, mask=m_ok)


# ==================================================================================================
# host side
# ==================================================================================================


@dataclass(eq=False)
class TritonMaps:
    """What the maps pass produced; reads like kernels.maps.MapsSink (`stats`, `rows`, `pooled()`)."""

    stats: dict[str, torch.Tensor] | None  # name in STATS -> (B, H, N) float32
    pooled_mean: torch.Tensor | None  # (B, H, R_q, R_k) float32
    tile: torch.Tensor | None  # (B, H, q1 − q0, k1 − k0) float32
    rows: torch.Tensor | None  # bin of each query row (as MapsSink.rows), None without pooled maps
    cols: torch.Tensor | None

    def pooled(self) -> torch.Tensor:
        return self.pooled_mean


def _span(block: int, r: int, n: int) -> int:
    """Power-of-two bound (≥ 16) on how many bins ⌊i·r/n⌋ a run of `block` positions touches."""
    span = min(block, (block - 1) * r // n + 2)
    return max(16, triton.next_power_of_2(span))


def triton_maps(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, *, scale: float, ctx: TokenContext, variant: Variant | None,
    model_mask=None, pooled: int | None = 256, stats: bool = True,
    tile: tuple[tuple[int, int], tuple[int, int]] | None = None,
    path_lse: torch.Tensor | None = None, spec: S.KernelSpec | None = None, block_m: int | None = None,
    block_n: int | None = None, sparse_block: int | tuple[int, int] | None = None, num_warps: int | None = None,
    allow_tf32: bool = False,
) -> TritonMaps:
    """Row statistics, pooled maps (mean probability per R×R tile) and one exact tile, in one pass.

    q (B, H, N, D), k (B, H_kv, Nk, D), lse (B, H, N) from the forward pass (3-D (H, N, D) / (H, N)
    inputs are taken as batch 1 and give 3-D results). pooled: R, or None for no pooled map;
    tile: ((q0, q1), (k0, k1)) or None; stats: whether to compute the row statistics.
    path_lse: polyline_path's (2, B, H, N) path LSEs (`AttnOut.path_lse`); computed when missing.
    """
    squeeze = q.dim() == 3
    if squeeze:
        q, k, lse = q[None], k[None], lse[None]
        path_lse = None if path_lse is None else path_lse[:, None]
    _check_inputs(q, k)
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    B, H, N, D = q.shape
    Nk = k.shape[2]
    if interpreting():
        block_m, block_n = block_m or 16, block_n or 16
    bm_, bn_ = block_m or 64, block_n or 32  # 64×32 × 4 warps: no spills with every switch on (H100)
    sparse = _sparse(sparse_block, block_m, block_n)
    prep = prepare(q, k, variant=variant, ctx=ctx, model_mask=model_mask, spec=spec, sparse=sparse)
    spec = prep.spec
    dev = q.device
    if spec.paths == 2 and path_lse is None:  # the two path LSEs come from a forward pass (v = k: any v works)
        path_lse = triton_attention(q, k, k, scale=scale, variant=variant, ctx=ctx, model_mask=model_mask, spec=spec,
                                    block_m=block_m, block_n=block_n, sparse_block=sparse_block).path_lse
    lse = lse.to(device=dev, dtype=torch.float32).reshape(B * H, N).contiguous()
    lse_paths = lse if path_lse is None else path_lse.to(dev, torch.float32).reshape(2, B * H, N).contiguous()

    rq = min(pooled, N) if pooled else 1
    rk = min(pooled, Nk) if pooled else 1
    stat_buf = torch.zeros(4, B, H, N, device=dev, dtype=torch.float32) if stats else prep.dummy.float()
    pool_buf = torch.zeros(B, H, rq, rk, device=dev, dtype=torch.float32) if pooled else prep.dummy.float()
    (tq0, tq1), (tk0, tk1) = tile if tile is not None else ((0, 0), (0, 0))
    if tile is not None and not (0 <= tq0 <= tq1 <= N and 0 <= tk0 <= tk1 <= Nk):
        raise ValueError(f"tile {tile} is outside the {N}×{Nk} attention matrix")
    tile_buf = torch.zeros(B, H, tq1 - tq0, tk1 - tk0, device=dev, dtype=torch.float32) if tile else prep.dummy.float()

    if stats or pooled:
        q_block0, n_qblocks = 0, triton.cdiv(N, bm_)
    else:  # tile only: the query blocks that hold its rows
        q_block0 = tq0 // bm_
        n_qblocks = max(0, triton.cdiv(tq1, bm_) - q_block0)
    if n_qblocks and B * H and N and (stats or pooled or (tq1 > tq0 and tk1 > tk0)):
        fwd_args = _kernel_args(q, k, k, k, lse, lse_paths, prep, scale)
        # forward args: q, k, v, out, lse, lse_paths, q strides(3), k strides(3), v strides(3), out strides(3), ...
        rest = fwd_args[18:]
        args = [q, k, lse, lse_paths, stat_buf, pool_buf, tile_buf, *fwd_args[6:12], *rest,
                rq, rk, tq0, tq1, tk0, tk1, q_block0]
        block_d = max(16, triton.next_power_of_2(D))
        on_gpu = dev.type == "cuda" and not interpreting()
        consts = dict(
            **prep.switches(), HAS_GRID=spec.uses_grid or ctx.kind == "vit", DIST_2D=ctx.kind == "vit",
            WANT_STATS=stats, WANT_POOLED=bool(pooled), WANT_TILE=tile is not None,
            DOT_PREC=_dot_precision(q.dtype, allow_tf32),
            POOL_SPLIT=1 if on_gpu else 2,  # bf16 split on a GPU, fp16 split interpreted (its bf16 dot is broken)
            BLOCK_M=bm_, BLOCK_N=bn_, BLOCK_D=block_d,
            SPARSE_M=prep.block_mask.block_m, SPARSE_N=prep.block_mask.block_n,
            NBQ=_span(bm_, rq, N), NBK=_span(bn_, rk, Nk), UPCAST=_upcast(q.dtype),
        )
        extra = {} if interpreting() else {"num_warps": num_warps or 4, "num_stages": 2}
        _maps_kernel[(n_qblocks, B * H)](*args, **consts, **extra)

    zero = list(spec.zero_heads)
    result_stats = None
    if stats:
        if zero:
            stat_buf[:, :, zero] = 0
        result_stats = {name: stat_buf[i] for i, name in enumerate(STATS)}
    pooled_mean = rows = cols = None
    if pooled:
        rows, cols = pool_bins(N, pooled, dev), pool_bins(Nk, pooled, dev)
        size = torch.bincount(rows, minlength=rq)[:, None] * torch.bincount(cols, minlength=rk)[None, :]
        pooled_mean = pool_buf / size
        if zero:
            pooled_mean[:, zero] = 0
    tile_out = None
    if tile is not None:
        tile_out = tile_buf
        if zero:
            tile_out[:, zero] = 0
    if squeeze:
        result_stats = None if result_stats is None else {n: s[0] for n, s in result_stats.items()}
        pooled_mean = None if pooled_mean is None else pooled_mean[0]
        tile_out = None if tile_out is None else tile_out[0]
    return TritonMaps(stats=result_stats, pooled_mean=pooled_mean, tile=tile_out, rows=rows, cols=cols)


def triton_exact_tile(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], *,
    scale: float, ctx: TokenContext, variant: Variant | None, model_mask=None, path_lse: torch.Tensor | None = None,
    spec: S.KernelSpec | None = None, **kw,
) -> torch.Tensor:
    """probs[q0:q1, k0:k1] = exp(s − lse) under the variant's masks and biases (kernels.maps.exact_tile).

    q, k (H, N, D) or (B, H, N, D) (k may have fewer heads); lse (H, N) or (B, H, N).
    Returns (H, q1 − q0, k1 − k0) or (B, H, q1 − q0, k1 − k0) float32.
    """
    res = triton_maps(q, k, lse, scale=scale, ctx=ctx, variant=variant, model_mask=model_mask, pooled=None,
                      stats=False, tile=(tuple(rows), tuple(cols)), path_lse=path_lse, spec=spec, **kw)
    if res.tile is None:
        raise VariantError("no tile was computed")
    return res.tile


__all__ = ["triton_maps", "triton_exact_tile", "TritonMaps"]
