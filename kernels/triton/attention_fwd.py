"""Forward attention in the FlashAttention-2 style with the variant families as compile-time switches.

Per program: one block of BLOCK_M queries of one (batch, head). Scores are kept in log2 units,
t = s·log2(e), so every exponential is an exp2 and the softmax scale is folded into one multiply:

    t_ij   = (q_i · k_j)·scale·log2(e) + bias_ij·log2(e)      (−∞ where masked)
    m_i    ← max(m_i, max_j t_ij)                              running max
    l_i    ← l_i·2^(m_old − m_i) + Σ_j 2^(t_ij − m_i)          running denominator
    acc_i  ← acc_i·2^(m_old − m_i) + Σ_j 2^(t_ij − m_i)·v_j
    out_i  = acc_i / l_i,    lse_i = (m_i + log2 l_i)·ln 2     (natural log, as the reference)

all in float32. The key loop runs only over the key blocks the block mask lists for this query
block (kernels/triton/block_mask.py): first the partial blocks, with the per-element mask, then
the full blocks, without it. A row with every key masked keeps m = −∞ and l = 0 and gives out = 0,
lse = −∞ (never NaN: the max used for rescaling is replaced by 0 while it is −∞).
Grouped-query attention: query head h reads key/value head h // (H / H_kv); nothing is expanded.

Compared with FlexAttention's Triton template: the same BlockMask layout (kv_num_blocks /
kv_indices, then full_kv_num_blocks / full_kv_indices) and sparse blocks of 128 that the
compute tiles subdivide; unlike Flex the mask and bias are not traced from Python but chosen
from a fixed menu by constexpr switches, which also lets a variant read per-token tables (grid
cells, groups, polyline prefix sums). Compared with the Triton tutorial's fused attention: the
same exp2/online-softmax inner loop, but causality is just another mask handled through the
block mask instead of the tutorial's two-stage (off-band / on-band) loop.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels import kernel_form as KF
from kernels.blocks import allowed_fn
from kernels.context import TokenContext
from kernels.core import AttnOut, and_masks
from kernels.triton import spec as S
from kernels.triton.block_mask import BlockMask, build_block_mask
from kernels.variants.base import Variant, VariantError

LN2 = 0.6931471805599453
LN2_C: tl.constexpr = tl.constexpr(LN2)
# the named switches of kernels/kernel_form.py, as the kernels read them
MASK_NONE: tl.constexpr = tl.constexpr(KF.MASK_NONE)
MASK_RULE: tl.constexpr = tl.constexpr(KF.MASK_RULE)
MASK_GROUP: tl.constexpr = tl.constexpr(KF.MASK_GROUP)
SCORE_SOFTCAP: tl.constexpr = tl.constexpr(KF.SCORE_SOFTCAP)
BIAS_NONE: tl.constexpr = tl.constexpr(KF.BIAS_NONE)
BIAS_DISTANCE: tl.constexpr = tl.constexpr(KF.BIAS_DISTANCE)
BIAS_MANHATTAN: tl.constexpr = tl.constexpr(KF.BIAS_MANHATTAN)
BIAS_GRID_D2: tl.constexpr = tl.constexpr(KF.BIAS_GRID_D2)
BIAS_D2_TABLE: tl.constexpr = tl.constexpr(KF.BIAS_D2_TABLE)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ==================================================================================================
# element-level helpers shared by the forward and the maps kernels
# ==================================================================================================


_RULES: dict = {}


def jit_rule(rule):
    """A variant's rule as a Triton function: the very same source, with `abs` read as tl.abs."""
    jitted = _RULES.get(rule)
    if jitted is None:
        # the interpreter patches tl's functions while it runs: it must find tl.abs at call time
        scope = {**rule.__globals__, "tl": tl, "abs": (lambda x: tl.abs(x)) if interpreting() else tl.abs}
        fn = types.FunctionType(rule.__code__, scope, rule.__name__, rule.__defaults__, rule.__closure__)
        fn.__module__, fn.__qualname__, fn.__doc__ = rule.__module__, rule.__qualname__, rule.__doc__
        jitted = _RULES[rule] = triton.jit(fn)
    return jitted


@triton.jit
def _mask_rule(qi, kj, rq, cq, rk, ck, P0, P1, P2, P3, RULE: tl.constexpr, RULE_GRID: tl.constexpr,
               N_INTS: tl.constexpr):
    """The variant's own rule (kernels/kernel_form.py) on token positions or grid cells, then its N_INTS
    integer parameters. qi, rq, cq (BM, 1); kj, rk, ck (1, BN) -> bool (BM, BN)."""
    if RULE_GRID:
        if N_INTS == 1:
            keep = RULE(rq, cq, rk, ck, P0)
        elif N_INTS == 2:
            keep = RULE(rq, cq, rk, ck, P0, P1)
        elif N_INTS == 3:
            keep = RULE(rq, cq, rk, ck, P0, P1, P2)
        else:
            keep = RULE(rq, cq, rk, ck, P0, P1, P2, P3)
    else:
        if N_INTS == 1:
            keep = RULE(qi, kj, P0)
        elif N_INTS == 2:
            keep = RULE(qi, kj, P0, P1)
        elif N_INTS == 3:
            keep = RULE(qi, kj, P0, P1, P2)
        else:
            keep = RULE(qi, kj, P0, P1, P2, P3)
    return keep


@triton.jit
def _element_keep(qi, kj, rq, cq, rk, ck, spq, spk, gq_off, gk, kvalid, GTab, N, NK, P0, P1, P2, P3,
                  MASK: tl.constexpr, RULE: tl.constexpr, RULE_GRID: tl.constexpr, N_INTS: tl.constexpr,
                  IS_CAUSAL: tl.constexpr, HAS_SPECIAL: tl.constexpr, HAS_KPAD: tl.constexpr):
    """Everything that can mask (i, j) in a partial tile: rule | special, AND causal, padding, bounds."""
    if MASK == MASK_GROUP:  # group table: table[g(i), g(j)] (block-sparse tables, block_topk, routing_2d)
        keep = tl.load(GTab + gq_off + gk, mask=(qi < N) & (kj < NK), other=0) != 0
    elif MASK == MASK_RULE:
        keep = _mask_rule(qi, kj, rq, cq, rk, ck, P0, P1, P2, P3, RULE, RULE_GRID, N_INTS)
    else:
        keep = (qi >= 0) & (kj >= 0)
    if HAS_SPECIAL:
        if MASK != MASK_NONE:
            keep = keep | spq | spk
    if IS_CAUSAL:
        keep = keep & (kj <= qi)
    if HAS_KPAD:
        keep = keep & kvalid
    return keep & (kj < NK)


@triton.jit
def _bias(qi, kj, rq, cq, rk, ck, spq, spk, coef, D2, BIAS: tl.constexpr, HAS_SPECIAL: tl.constexpr):
    """Additive bias in log2 units (coef and D2 are pre-multiplied by log2 e); 0 on special pairs."""
    if BIAS == BIAS_DISTANCE:
        b = tl.abs(qi - kj).to(tl.float32) * coef
    elif BIAS == BIAS_MANHATTAN:
        b = (tl.abs(rq - rk) + tl.abs(cq - ck)).to(tl.float32) * coef
    elif BIAS == BIAS_GRID_D2:
        dr = rq - rk
        dc = cq - ck
        b = (dr * dr + dc * dc).to(tl.float32) * coef
    else:  # BIAS_D2_TABLE
        dr = rq - rk
        dc = cq - ck
        b = tl.load(D2 + (dr * dr + dc * dc))
    if HAS_SPECIAL:
        b = tl.where(spq | spk, 0.0, b)
    return b


@triton.jit
def _polyline_bias(TR, TC, rq, cq, rk, ck, spq, spk, trq0, trq1, tcq0, tcq1, trk0, trk1, tck0, tck1, RC, W,
                   HAS_SPECIAL: tl.constexpr):
    """The two L-shaped path biases (log2 units) from the row table TR and column table TC.

    TR[s·RC + r·W + c]: prefix sums of log α along row r, s = 0 inclusive, 1 exclusive; TC the same
    for log β along columns. trq0/trq1 = TR[0|1, cell(i)] (BM, 1); trk0/trk1 = TR[0|1, cell(j)] (1, BN)
    and likewise for TC. Path 1: along row r_i to c_j, then along column c_j; path 2: column first.
    """
    fw_c = ck >= cq  # moving right (or staying)
    fw_r = rk >= rq  # moving down (or staying)
    sel_r = tl.where(fw_c, 0, RC)
    sel_c = tl.where(fw_r, 0, RC)
    # path 1 = on_row(r_i: c_i -> c_j) + on_col(c_j: r_i -> r_j)
    a = tl.load(TR + sel_r + rq * W + ck)
    b = tl.where(fw_c, trq0, trq1)
    row1 = tl.where(fw_c, a - b, b - a)
    a = tl.where(fw_r, tck0, tck1)
    b = tl.load(TC + sel_c + rq * W + ck)
    col1 = tl.where(fw_r, a - b, b - a)
    # path 2 = on_col(c_i: r_i -> r_j) + on_row(r_j: c_i -> c_j)
    a = tl.load(TC + sel_c + rk * W + cq)
    b = tl.where(fw_r, tcq0, tcq1)
    col2 = tl.where(fw_r, a - b, b - a)
    a = tl.where(fw_c, trk0, trk1)
    b = tl.load(TR + sel_r + rk * W + cq)
    row2 = tl.where(fw_c, a - b, b - a)
    L1 = row1 + col1
    L2 = col2 + row2
    if HAS_SPECIAL:
        L1 = tl.where(spq | spk, 0.0, L1)
        L2 = tl.where(spq | spk, 0.0, L2)
    return L1, L2


@triton.jit
def _softcap(t, CAP2):
    """CAP2·tanh(t / CAP2) (log2 units: CAP2 = cap·log2 e), tanh as 2·sigmoid(2x) − 1."""
    return CAP2 * (2.0 * tl.sigmoid(2.0 * t / CAP2) - 1.0)


@triton.jit
def _online_update(t, m_i, l_i, acc, v, PARTIAL: tl.constexpr, DOT_PREC: tl.constexpr):
    """One online-softmax step on scores t (BM, BN) in log2 units, values v (BN, BD)."""
    m_new = tl.maximum(m_i, tl.max(t, 1))
    if PARTIAL:  # a row may still be all −∞: rescale against 0 instead of −∞ (no NaN)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(t - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_new, l_i, acc


# ==================================================================================================
# the forward kernel
# ==================================================================================================


@triton.jit
def _fwd_tile(acc, m_i, l_i, acc2, m2, l2, mu, lu, q, start_n,
              K, V, skn, svn, offs_d, d_ok, qi, rq, cq, spq, gq, trq0, trq1, tcq0, tcq1,
              Special, Row, Col, KValid, GTab, GK, sgq, Coef_h, D2, TR, TC, RC, GRID_W,
              N, NK, HEAD_DIM, qk_scale, CAP2, P0, P1, P2, P3,
              PARTIAL: tl.constexpr, IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, RULE: tl.constexpr,
              RULE_GRID: tl.constexpr, N_INTS: tl.constexpr, SCORE: tl.constexpr, BIAS: tl.constexpr,
              PATHS: tl.constexpr, HAS_SPECIAL: tl.constexpr, HAS_KPAD: tl.constexpr, HAS_GRID: tl.constexpr,
              DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr, PAD_D: tl.constexpr, UPCAST: tl.constexpr):
    """Scores of one (BLOCK_M × BLOCK_N) tile and the online-softmax update(s)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    kj = offs_n[None, :]
    k_ptrs = K + offs_n[:, None] * skn + offs_d[None, :]  # (BN, BD)
    v_ptrs = V + offs_n[:, None] * svn + offs_d[None, :]
    if PARTIAL:  # may overhang the last key
        k_ok = offs_n < NK
        if PAD_D:
            ld_mask = k_ok[:, None] & d_ok[None, :]
        else:
            ld_mask = k_ok[:, None]
        k = tl.load(k_ptrs, mask=ld_mask, other=0.0)
        v = tl.load(v_ptrs, mask=ld_mask, other=0.0)
    else:  # full tiles never overhang
        k_ok = offs_n >= 0
        if PAD_D:
            k = tl.load(k_ptrs, mask=d_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
    if UPCAST:  # the interpreter has no bfloat16 matmul: compute in float32
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    t = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BM, BN), log2 units
    if SCORE == SCORE_SOFTCAP:
        t = _softcap(t, CAP2)

    # key-side token tables (grid cells, special flags, groups, padding)
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
        keep = _element_keep(qi, kj, rq, cq, rk, ck, spq, spk, gq * sgq, gk, kvalid, GTab, N, NK,
                             P0, P1, P2, P3, MASK, RULE, RULE_GRID, N_INTS, IS_CAUSAL, HAS_SPECIAL, HAS_KPAD)
        t = tl.where(keep, t, float("-inf"))

    if PATHS == 2:  # polyline: two biased softmaxes plus the unbiased one for the recorded lse
        trk0 = tl.load(TR + rk * GRID_W + ck)
        trk1 = tl.load(TR + RC + rk * GRID_W + ck)
        tck0 = tl.load(TC + rk * GRID_W + ck)
        tck1 = tl.load(TC + RC + rk * GRID_W + ck)
        L1, L2 = _polyline_bias(TR, TC, rq, cq, rk, ck, spq, spk, trq0, trq1, tcq0, tcq1,
                                trk0, trk1, tck0, tck1, RC, GRID_W, HAS_SPECIAL)
        m_i, l_i, acc = _online_update(t + L1, m_i, l_i, acc, v, PARTIAL, DOT_PREC)
        m2, l2, acc2 = _online_update(t + L2, m2, l2, acc2, v, PARTIAL, DOT_PREC)
        mu_new = tl.maximum(mu, tl.max(t, 1))
        mu_use = tl.where(mu_new == float("-inf"), 0.0, mu_new)
        lu = lu * tl.math.exp2(mu - mu_use) + tl.sum(tl.math.exp2(t - mu_use[:, None]), 1)
        mu = mu_new
    else:
        if BIAS != BIAS_NONE:
            t = t + _bias(qi, kj, rq, cq, rk, ck, spq, spk, Coef_h, D2, BIAS, HAS_SPECIAL)
        m_i, l_i, acc = _online_update(t, m_i, l_i, acc, v, PARTIAL, DOT_PREC)
    return acc, m_i, l_i, acc2, m2, l2, mu, lu


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse, LseP,  # q (B,H,N,D); k, v (B,Hkv,Nk,D); out (B,H,N,D); lse (B,H,N); LseP (2,B,H,N)
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    KvNum, KvIdx, FullNum, FullIdx,  # block mask, (B,H,nQB) and (B,H,nQB,nKB) with broadcast strides
    snb, snh, snq, sib, sih, siq,
    Special, Row, Col, KValid, skvb,  # token tables: int8 (N), int32 (N), int32 (N), int8 (B,Nk)
    Coef, D2, GTab, GQ, GK, sgb, sgh, sgq,  # bias per head (H), d² table, group table (Bt,Ht,Gq,Gk)
    TRow, TCol, stb, sth,  # polyline tables (Bt, Hkv_t, 2, rows·cols)
    H, N, NK, KV_GROUP, HEAD_DIM, qk_scale, CAP2, P0, P1, P2, P3, RC, GRID_W,
    IS_CAUSAL: tl.constexpr, MASK: tl.constexpr, RULE: tl.constexpr, RULE_GRID: tl.constexpr, N_INTS: tl.constexpr,
    SCORE: tl.constexpr, BIAS: tl.constexpr, PATHS: tl.constexpr,
    HAS_SPECIAL: tl.constexpr, HAS_KPAD: tl.constexpr, HAS_GRID: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    SPARSE_M: tl.constexpr, SPARSE_N: tl.constexpr, UPCAST: tl.constexpr,
):
    """out = softmax(q kᵀ·scale + bias, masked) v and lse per row, for one (query block, batch·head)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // KV_GROUP  # grouped-query attention: the kv head serving query head h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # (BM, BD)
    if UPCAST:
        q = q.to(tl.float32)
    Kb = K + b * skb + hk * skh
    Vb = V + b * svb + hk * svh

    # query-side token tables
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
    GTab_bh = GTab + b * sgb + h * sgh
    if MASK == MASK_GROUP:
        gq = tl.load(GQ + offs_m, mask=m_ok, other=0)[:, None]
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

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    m2 = m_i
    l2 = l_i
    acc2 = acc
    mu = m_i
    lu = l_i

    # block mask row of this query block (a sparse block may hold several compute blocks)
    sq = (pid_m * BLOCK_M) // SPARSE_M
    MULT: tl.constexpr = SPARSE_N // BLOCK_N
    num = tl.load(KvNum + b * snb + h * snh + sq * snq)
    idx = KvIdx + b * sib + h * sih + sq * siq
    for t in range(0, num * MULT):  # partial blocks: per-element mask
        start_n = tl.load(idx + t // MULT) * SPARSE_N + (t % MULT) * BLOCK_N
        acc, m_i, l_i, acc2, m2, l2, mu, lu = _fwd_tile(
            acc, m_i, l_i, acc2, m2, l2, mu, lu, q, start_n, Kb, Vb, skn, svn, offs_d, d_ok, qi, rq, cq, spq, gq,
            trq0, trq1, tcq0, tcq1, Special, Row, Col, KValid + b * skvb, GTab_bh, GK, sgq, Coef_h, D2, TR, TC, RC,
            GRID_W, N, NK, HEAD_DIM, qk_scale, CAP2, P0, P1, P2, P3,
            True, IS_CAUSAL, MASK, RULE, RULE_GRID, N_INTS, SCORE, BIAS, PATHS, HAS_SPECIAL, HAS_KPAD, HAS_GRID,
            DOT_PREC, BLOCK_N, PAD_D, UPCAST)
    num = tl.load(FullNum + b * snb + h * snh + sq * snq)
    idx = FullIdx + b * sib + h * sih + sq * siq
    for t in range(0, num * MULT):  # full blocks: no mask at all
        start_n = tl.load(idx + t // MULT) * SPARSE_N + (t % MULT) * BLOCK_N
        acc, m_i, l_i, acc2, m2, l2, mu, lu = _fwd_tile(
            acc, m_i, l_i, acc2, m2, l2, mu, lu, q, start_n, Kb, Vb, skn, svn, offs_d, d_ok, qi, rq, cq, spq, gq,
            trq0, trq1, tcq0, tcq1, Special, Row, Col, KValid + b * skvb, GTab_bh, GK, sgq, Coef_h, D2, TR, TC, RC,
            GRID_W, N, NK, HEAD_DIM, qk_scale, CAP2, P0, P1, P2, P3,
            False, IS_CAUSAL, MASK, RULE, RULE_GRID, N_INTS, SCORE, BIAS, PATHS, HAS_SPECIAL, HAS_KPAD, HAS_GRID,
            DOT_PREC, BLOCK_N, PAD_D, UPCAST)

    # epilogue: empty rows (l = 0) give 0 and lse = −∞
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2_C)
    if PATHS == 2:
        empty2 = l2 == 0.0
        out = 0.5 * out + 0.5 * acc2 / tl.where(empty2, 1.0, l2)[:, None]
        lse2 = tl.where(empty2, float("-inf"), (m2 + tl.math.log2(tl.where(empty2, 1.0, l2))) * LN2_C)
        emptyu = lu == 0.0
        lseu = tl.where(emptyu, float("-inf"), (mu + tl.math.log2(tl.where(emptyu, 1.0, lu))) * LN2_C)
        P_STRIDE = tl.num_programs(1) * N  # LseP is (2, B·H, N)
        tl.store(LseP + pid_bh * N + offs_m, lse, mask=m_ok)
        tl.store(LseP + P_STRIDE + pid_bh * N + offs_m, lse2, mask=m_ok)
        lse = lseu
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + pid_bh * N + offs_m, lse, mask=m_ok)



# ==================================================================================================
# host side: spec + context + model mask -> kernel arguments
# ==================================================================================================


# (BLOCK_M, BLOCK_N, num_warps, num_stages) for H100-class GPUs; every tile divides the 128×128
# sparse blocks of the block mask. Half precision, one softmax: FlashAttention-2-sized tiles.
# float32 (tf32x3 products) and polyline's two softmaxes keep twice the state: smaller tiles.
_HALF_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 128, 4, 3),
               (128, 64, 8, 4), (64, 32, 4, 4)]
_HEAVY_TILES = [(64, 32, 4, 2), (64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 4, 2), (32, 32, 4, 2)]


def _configs():
    tiles = _HALF_TILES + [t for t in _HEAVY_TILES if t not in _HALF_TILES]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in tiles]


def _prune(configs, named_args, **kwargs):
    """The tile family for this call (half vs heavy), restricted to tiles that subdivide the sparse blocks."""
    sm = kwargs.get("SPARSE_M", named_args.get("SPARSE_M", SPARSE_BLOCK))
    sn = kwargs.get("SPARSE_N", named_args.get("SPARSE_N", SPARSE_BLOCK))
    heavy = kwargs.get("PATHS", 1) == 2 or named_args["Q"].dtype == torch.float32
    family = set(_HEAVY_TILES if heavy else _HALF_TILES)
    kept = [c for c in configs
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in family
            and sm % c.kwargs["BLOCK_M"] == 0 and sn % c.kwargs["BLOCK_N"] == 0]
    return kept or [triton.Config({"BLOCK_M": min(sm, 64), "BLOCK_N": min(sn, 32)}, num_warps=4, num_stages=2)]


SPARSE_BLOCK = 128  # block-mask granularity on a GPU (FlexAttention's default)

_attn_fwd_tuned = triton.autotune(
    configs=_configs(),
    prune_configs_by={"early_config_prune": _prune},
    key=["N", "NK", "HEAD_DIM", "MASK", "RULE_GRID", "N_INTS", "SCORE", "BIAS", "PATHS", "IS_CAUSAL", "HAS_KPAD",
         "HAS_SPECIAL", "BLOCK_D"],
)(_attn_fwd)


@dataclass(eq=False)
class Prepared:
    """Everything a kernel launch needs besides q, k, v: the spec, token tables, block mask."""

    spec: S.KernelSpec
    causal: bool
    block_mask: BlockMask
    special: torch.Tensor | None
    row: torch.Tensor
    col: torch.Tensor
    kvalid: torch.Tensor | None
    coef2: torch.Tensor  # (H,) float32, log2 units
    d2: torch.Tensor
    group: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    poly: tuple[torch.Tensor, torch.Tensor] | None
    grid_w: int
    rc: int
    dummy: torch.Tensor

    def group_args(self, B: int, H: int):
        """Group table broadcast to (B, H, Gq, Gk) (stride 0 where shared), q groups, k groups, strides."""
        if self.group is None:
            return self.dummy, self.dummy, self.dummy, 0, 0, 0
        tab, gq, gk = self.group
        tab = tab.expand(B, H, *tab.shape[2:])
        return tab, gq, gk, tab.stride(0), tab.stride(1), tab.stride(2)

    def poly_args(self, B: int, Hkv: int):
        """Polyline tables broadcast to (B, H_kv, 2, rows·cols) and their batch / head strides."""
        if self.poly is None:
            return self.dummy, self.dummy, 0, 0
        tr, tc = (t.expand(B, Hkv, *t.shape[2:]) for t in self.poly)
        return tr, tc, tr.stride(0), tr.stride(1)

    def switches(self) -> dict:
        """The constexpr switches both kernels take from the variant's kernel form."""
        spec = self.spec
        return dict(IS_CAUSAL=self.causal, MASK=spec.mask, RULE=jit_rule(spec.rule) if spec.rule else None,
                    RULE_GRID=spec.rule_grid, N_INTS=len(spec.ints), SCORE=spec.score, BIAS=spec.bias,
                    PATHS=spec.paths, HAS_SPECIAL=self.special is not None, HAS_KPAD=self.kvalid is not None)

    def block_args(self, B: int, H: int):
        bm = self.block_mask.expand(B, H)
        return (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
                *bm.kv_num_blocks.stride(), *bm.kv_indices.stride()[:3])


_BLOCK_MASK_CACHE: dict[tuple, BlockMask] = {}
_CACHE_SIZE = 64


def prepare(q: torch.Tensor, k: torch.Tensor, *, variant: Variant | None, ctx: TokenContext, model_mask=None,
            spec: S.KernelSpec | None = None, sparse: tuple[int, int] | None = None) -> Prepared:
    """Resolve the spec for this call, build the token tables and the block mask (cached when static)."""
    if spec is None:
        if variant is None:
            raise VariantError("triton attention needs a variant or a kernel spec")
        spec = S.kernel_spec(variant, ctx)
        if spec is None:
            raise VariantError(f"{variant.name} has no Triton kernel for a {ctx.kind} model; use the reference path")
    B, H, N, _ = q.shape
    Nk = k.shape[2]
    dev = q.device
    if ctx.n != N:
        raise VariantError(f"the token context has {ctx.n} tokens, q has {N}")
    self_attn = N == Nk
    sparse = sparse or (SPARSE_BLOCK, SPARSE_BLOCK)
    static = _static_tables(spec, ctx, H, dev)
    if (spec.uses_grid or spec.paths == 2 or static.special is not None) and not self_attn:
        raise VariantError("grid and special-token variants need self-attention in the Triton kernels")
    causal = spec.causal and self_attn
    kvalid, mask_causal = key_padding(model_mask, B, N, Nk, causal, dev)
    causal = causal or mask_causal

    tables = spec.content(q, k) if spec.content is not None else KF.ContentTables()
    if tables is None:
        raise VariantError(f"{spec.name}: no Triton kernel for this call")
    group = None
    if tables.group is not None:  # (1|B, 1|H, Gq, Gk) table, group of each query and key
        tab, gq, gk = tables.group
        tab = tab.to(device=dev, dtype=torch.int8)
        while tab.dim() < 4:
            tab = tab[None]
        group = (tab.contiguous(), gq.to(dev).clamp(min=0).to(torch.int32).contiguous(),
                 gk.to(dev).clamp(min=0).to(torch.int32).contiguous())
    poly = None
    if tables.polyline is not None:  # (1|B, 1|H_kv, 2, rows·cols), to log2 units
        tr, tc = (t.to(device=dev, dtype=torch.float64) * S.LOG2E for t in tables.polyline)
        tr, tc = torch.broadcast_tensors(tr, tc)
        poly = (tr.float().contiguous(), tc.float().contiguous())

    bm = _block_mask(spec, variant, static, group, causal, B, H, N, Nk, sparse, dev)
    if kvalid is not None:
        bm = bm.with_key_padding(kvalid)
    rows, cols = ctx.grid or (1, N)
    return Prepared(spec=spec, causal=causal, block_mask=bm, special=static.special, row=static.row, col=static.col,
                    kvalid=None if kvalid is None else kvalid.to(torch.int8).contiguous(),
                    coef2=static.coef2, d2=static.d2, group=group, poly=poly, grid_w=cols, rc=rows * cols,
                    dummy=static.dummy)


@dataclass(eq=False)
class _Static:
    """Per (context, spec, heads, device): the token tables on the device, built once.

    Keyed by the identity of the context's tensors (TokenContext.with_layer shares them between
    layers), so a call does no host→device copy and no device sync for them.
    """

    key: tuple
    ctx: TokenContext  # on the device; also keeps the keyed tensors alive (their ids stay unique)
    special: torch.Tensor | None
    row: torch.Tensor
    col: torch.Tensor
    coef2: torch.Tensor
    d2: torch.Tensor
    dummy: torch.Tensor


_STATIC_CACHE: dict[tuple, _Static] = {}


def _static_tables(spec: S.KernelSpec, ctx: TokenContext, H: int, dev) -> _Static:
    key = (id(ctx.special), id(ctx.row), id(ctx.col), ctx.kind, ctx.n, ctx.grid, spec.key, H, str(dev))
    hit = _STATIC_CACHE.get(key)
    if hit is not None and hit.key == key:
        return hit
    dctx = ctx.to(dev)
    has_special = bool(dctx.special.any())
    coef = spec.head_coef(H) if spec.head_coef is not None else torch.zeros(H, dtype=torch.float64)
    d2 = spec.d2_table if spec.d2_table is not None else torch.zeros(1, dtype=torch.float64)
    out = _Static(
        key=key, ctx=dctx,
        special=dctx.special.to(torch.int8).contiguous() if has_special else None,
        row=dctx.row.clamp(min=0).to(torch.int32).contiguous(),
        col=dctx.col.clamp(min=0).to(torch.int32).contiguous(),
        coef2=(coef * S.LOG2E).to(device=dev, dtype=torch.float32).contiguous(),
        d2=(d2 * S.LOG2E).to(device=dev, dtype=torch.float32).contiguous(),
        dummy=torch.zeros(1, dtype=torch.int32, device=dev),
    )
    _hold(ctx)
    if len(_STATIC_CACHE) >= _CACHE_SIZE:
        _STATIC_CACHE.pop(next(iter(_STATIC_CACHE)))
    _STATIC_CACHE[key] = out
    return out


_HELD: list = []


def _hold(ctx: TokenContext) -> None:
    """Keep the keyed host tensors alive while their cache entries may exist (ids are not reused)."""
    _HELD.append((ctx.special, ctx.row, ctx.col))
    del _HELD[: -4 * _CACHE_SIZE]


def _block_mask(spec, variant, static: _Static, group, causal, B, H, N, Nk, sparse, dev) -> BlockMask:
    """The block mask of the variant's mask, causality and specials (not the model mask)."""
    bm_, bn_ = sparse
    ctx = static.ctx
    if group is None:
        key = (static.key, causal, Nk, bm_, bn_)
        hit = _BLOCK_MASK_CACHE.get(key)
        if hit is not None:
            return hit
        if spec.mask == KF.MASK_NONE:
            keep = _causal_keep(causal, Nk, dev)
        else:
            if variant is None:
                raise VariantError(f"{spec.name}: a static mask spec needs its variant to build the block mask")
            base = allowed_fn(variant, ctx, None, 1, H, Nk, dev)  # variant mask_mod AND ctx causality
            extra = _causal_keep(causal and not ctx.causal, Nk, dev)
            keep = base if extra is None else (lambda q0, q1: and_masks(base(q0, q1), extra(q0, q1)))
        out = build_block_mask(keep or (lambda q0, q1: None), 1, H, N, Nk, block_m=bm_, block_n=bn_, device=dev)
        if len(_BLOCK_MASK_CACHE) >= _CACHE_SIZE:
            _BLOCK_MASK_CACHE.pop(next(iter(_BLOCK_MASK_CACHE)))
        _BLOCK_MASK_CACHE[key] = out
        return out
    tab, gq, gk = group
    special = ctx.special if static.special is not None else None
    kj = torch.arange(Nk, device=dev)

    def keep(q0, q1):
        m = tab[:, :, gq[q0:q1].long()][..., gk.long()] != 0  # (Bt, Ht, c, Nk)
        if special is not None:
            m = m | (special[q0:q1, None] | special[None, :])
        if causal:
            m = m & (kj[None, :] <= torch.arange(q0, q1, device=dev)[:, None])
        return m

    return build_block_mask(keep, tab.shape[0], tab.shape[1], N, Nk, block_m=bm_, block_n=bn_, device=dev)


def _causal_keep(causal: bool, nk: int, dev):
    if not causal:
        return None
    kj = torch.arange(nk, device=dev)
    return lambda q0, q1: (kj[None, :] <= torch.arange(q0, q1, device=dev)[:, None])[None, None]


def key_padding(model_mask, B: int, N: int, Nk: int, causal: bool, dev) -> tuple[torch.Tensor | None, bool]:
    """The model's mask as (key validity (B, Nk) or None, whether it is also causal).

    The Triton kernels take the model's mask only as key padding (optionally with causality);
    anything else (a model's own sliding window, ...) raises VariantError so the caller uses the
    reference path. The check evaluates the mask one chunk of rows at a time.
    """
    if model_mask is None:
        return None, False
    rows_per_chunk = max(1, (1 << 22) // max(1, B * Nk))
    valid = None
    chunks = []
    for q0 in range(0, N, rows_per_chunk):
        q1 = min(N, q0 + rows_per_chunk)
        m = model_mask.rows(q0, q1)
        if m is None:
            continue
        m = m.to(dev).bool()
        while m.dim() < 4:
            m = m[None]
        m = m.expand(B, m.shape[1], q1 - q0, Nk).any(1)  # (B, c, Nk)
        chunks.append((q0, q1))
        valid = m.any(1) if valid is None else valid | m.any(1)
    if valid is None:
        return None, False
    kj = torch.arange(Nk, device=dev)
    for as_causal in ((causal, True) if not causal else (True,)):
        ok = True
        for q0, q1 in chunks:
            m = model_mask.rows(q0, q1).to(dev).bool()
            while m.dim() < 4:
                m = m[None]
            want = valid[:, None, :]
            if as_causal:
                want = want & (kj[None, None, :] <= torch.arange(q0, q1, device=dev)[None, :, None])
                m = m & (kj[None, None, None, :] <= torch.arange(q0, q1, device=dev)[None, None, :, None])
                # rows of a causal call are judged on the causal part only: the kernel ANDs causality anyway
            if not bool((m.expand(B, m.shape[1], q1 - q0, Nk) == want[:, None]).all()):
                ok = False
                break
        if ok:
            return (None if bool(valid.all()) else valid), (as_causal and not causal)
    raise VariantError("the model's mask is not key padding (plus causality); the Triton kernels cannot apply it")


def _upcast(dtype: torch.dtype) -> bool:
    """Under the interpreter bfloat16 tiles are multiplied in float32 (its bf16 dot is not usable)."""
    return interpreting() and dtype == torch.bfloat16


def _dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """float32 inputs: three TF32 products (≈ float32 accuracy) on a GPU, or one when allowed."""
    if dtype != torch.float32:
        return "tf32"  # ignored for half-precision operands
    if allow_tf32:
        return "tf32"
    return "ieee" if interpreting() else "tf32x3"


def _check_inputs(q, k, v=None):
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("q, k, v must be (B, H, N, D)")
    B, H, N, D = q.shape
    if k.shape[0] != B or (v is not None and v.shape[:3] != k.shape[:3]) or k.shape[-1] != D:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if H % k.shape[1]:
        raise ValueError(f"{H} query heads are not a multiple of {k.shape[1]} key/value heads")
    if D > 256:
        raise ValueError(f"head dim {D} > 256 is not supported")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {q.dtype} is not supported (float32, float16, bfloat16)")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError("the Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on CPU)")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, variant: Variant | None, ctx: TokenContext,
    model_mask=None, spec: S.KernelSpec | None = None, block_m: int | None = None, block_n: int | None = None,
    sparse_block: int | tuple[int, int] | None = None, num_warps: int | None = None, num_stages: int | None = None,
    allow_tf32: bool = False, out_dtype: torch.dtype = torch.float32,
) -> AttnOut:
    """Attention of q (B, H, N, D) against k, v (B, H_kv, Nk, D) under `variant`, as kernels.reference.

    Returns AttnOut(out (B, H, N, D) in `out_dtype` (float32 by default), lse (B, H, N) natural log,
    −∞ on empty rows, empty (B, H, N)). polyline_path also sets `res.path_lse` = (lse of s+L, lse of
    s+L'), (2, B, H, N), which the maps kernel needs; its `lse` is that of the unbiased masked scores.
    block_m / block_n (and num_warps / num_stages) pin one tile configuration instead of autotuning;
    under TRITON_INTERPRET=1 they default to 16 × 16. sparse_block: block-mask granularity (default
    128, or block_m × block_n when pinned). allow_tf32: TF32 products for float32 inputs.
    """
    _check_inputs(q, k, v)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, N, D = q.shape
    if interpreting():
        block_m, block_n = block_m or 16, block_n or 16
    sparse = _sparse(sparse_block, block_m, block_n)
    prep = prepare(q, k, variant=variant, ctx=ctx, model_mask=model_mask, spec=spec, sparse=sparse)
    spec = prep.spec
    out = torch.empty(B, H, N, D, device=q.device, dtype=out_dtype)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    lse_paths = torch.empty(2, B, H, N, device=q.device, dtype=torch.float32) if spec.paths == 2 else lse
    if N == 0 or B * H == 0:
        return AttnOut(out=out.zero_(), lse=lse.fill_(float("-inf")), empty=torch.ones_like(lse, dtype=torch.bool))
    block_d = max(16, triton.next_power_of_2(D))
    args = _kernel_args(q, k, v, out, lse, lse_paths, prep, scale)
    consts = dict(
        **prep.switches(), HAS_GRID=spec.uses_grid, DOT_PREC=_dot_precision(q.dtype, allow_tf32), BLOCK_D=block_d,
        PAD_D=block_d != D, SPARSE_M=prep.block_mask.block_m, SPARSE_N=prep.block_mask.block_n, UPCAST=_upcast(q.dtype),
    )
    if block_m is not None:
        grid = (triton.cdiv(N, block_m), B * H)
        extra = {} if interpreting() else {"num_warps": num_warps or 4, "num_stages": num_stages or 3}
        _attn_fwd[grid](*args, BLOCK_M=block_m, BLOCK_N=block_n, **consts, **extra)
    else:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd_tuned[grid](*args, **consts)
    if spec.zero_heads:
        out[:, list(spec.zero_heads)] = 0
    res = AttnOut(out=out, lse=lse, empty=torch.isneginf(lse))
    if spec.paths == 2:
        res.path_lse = lse_paths
    return res


def _sparse(sparse_block, block_m, block_n) -> tuple[int, int]:
    if sparse_block is not None:
        return (sparse_block, sparse_block) if isinstance(sparse_block, int) else tuple(sparse_block)
    if block_m is not None:
        return (block_m, block_n)
    return (SPARSE_BLOCK, SPARSE_BLOCK)


def _kernel_args(q, k, v, out, lse, lse_paths, prep: Prepared, scale: float) -> list:
    B, H, N, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    spec = prep.spec
    p0, p1, p2, p3 = (*spec.ints, 0, 0, 0, 0)[:4]
    dummy = prep.dummy
    gtab, gq, gk, sgb, sgh, sgq = prep.group_args(B, H)
    tr, tc, stb, sth = prep.poly_args(B, Hkv)
    return [
        q, k, v, out, lse, lse_paths,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        *prep.block_args(B, H),
        prep.special if prep.special is not None else dummy, prep.row, prep.col,
        prep.kvalid if prep.kvalid is not None else dummy, prep.kvalid.stride(0) if prep.kvalid is not None else 0,
        prep.coef2, prep.d2, gtab, gq, gk, sgb, sgh, sgq,
        tr, tc, stb, sth,
        H, N, Nk, H // Hkv, D, scale * S.LOG2E, spec.cap * S.LOG2E, p0, p1, p2, p3, prep.rc, prep.grid_w,
    ]


__all__ = ["triton_attention", "prepare", "key_padding", "interpreting"]
