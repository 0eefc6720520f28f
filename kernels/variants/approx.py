"""Family (d) of shared/VARIANTS.md: approximations that replace the computation (entries 20–25).

Each variant implements `attend`. Conventions of the whole family:
- Memory is O(N) unless probabilities are asked for (want_probs or sinks): then the implied
  attention matrix (the matrix A with out = A @ v) is built one query chunk at a time.
- The model's own mask enters as a key mask (a key no query may see, e.g. padding, is dropped)
  and a row mask (a query that may see no key gives a zero output, empty=True); causality is
  kept exactly by prefix sums where the variant applies to causal models. A model mask with
  more structure (a sliding window, ...) has no O(N) form: it is refused, never widened. So are
  the model's own score modifiers (soft-capping, ALiBi, learned sinks): `honours_native = False`.
- Sinks receive the implied probabilities and, as scores, the model's own masked scores
  q kᵀ·scale (-inf where the model masks): an approximation has no per-key scores of its own.
- lse is None: these outputs are not a softmax over the keys (delta_correction included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.context import TokenContext
from kernels.core import NEG_INF, AttnOut, Chunk, Rows, chunk_ranges, mask_coverage, run_chunks, softmax_lse
from kernels.variants.base import Param, Variant, VariantError
from kernels.variants.content import ALL_KINDS, group_mean
from kernels.variants.registry import parse_inner, register

BIDIRECTIONAL = frozenset({"bidirectional", "vit"})


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


class Approximation(Variant):
    """An O(N) computation in place of softmax attention; see the module docstring."""

    family = "approx"
    honours_native = False


def model_masks(call, name: str, *, causal: bool = False):
    """(key_ok (B, H, Nk), row_ok (B, H, N)) of the model's mask, or (None, None) when it keeps every key.

    causal: the variant keeps causality itself. A mask that is more than key × row (× causal) is
    refused in one line: the approximation would widen it."""
    q, nk = call.q, call.k.shape[2]
    B, H, N, _ = q.shape
    key_ok, row_ok = mask_coverage(call.allowed, B, H, N, nk, call.chunk, q.device)
    if key_ok is None:
        return None, None
    kj = torch.arange(nk, device=q.device)
    for q0, q1 in chunk_ranges(N, call.chunk):
        want = key_ok[:, :, None, :] & row_ok[:, :, q0:q1, None]
        if causal:
            want = want & (kj[None, :] <= torch.arange(q0, q1, device=q.device)[:, None])
        if not torch.equal(call.allowed(q0, q1).expand(B, H, q1 - q0, nk), want):
            raise VariantError(f"{name} cannot honour this model's own mask (more than padding and causality, e.g. "
                               "a sliding window); pick a softmax variant for this model")
    return key_ok, row_ok


def empty_rows(row_ok, B: int, H: int, N: int, device) -> torch.Tensor:
    return torch.zeros(B, H, N, dtype=torch.bool, device=device) if row_ok is None else ~row_ok


def masked_scores(q_rows: torch.Tensor, k: torch.Tensor, scale: float, keep) -> torch.Tensor:
    """s = q kᵀ·scale in float32, -inf where `keep` is False. q_rows (B,H,c,D), k (B,H,Nk,D) -> (B,H,c,Nk)."""
    s = torch.matmul(q_rows.float(), k.float().transpose(-1, -2)) * scale
    return s if keep is None else s.masked_fill(~keep, NEG_INF)


def finish(call, out: torch.Tensor, empty: torch.Tensor, rows) -> AttnOut:
    """The result: out with empty rows zeroed, and the implied attention rows(q0, q1) -> (B, H, c, Nk)
    handed to the sinks (with the model's masked scores) and stored, one query chunk at a time, when asked."""
    out = out.masked_fill(empty[..., None], 0.0)
    if not call.want_probs and not call.sinks:
        return AttnOut(out=out, lse=None, empty=empty)
    q, k, nk = call.q, call.k, call.k.shape[2]

    def step(q0: int, q1: int) -> Rows:
        p = rows(q0, q1).masked_fill(empty[:, :, q0:q1, None], 0.0)
        scores = lambda: masked_scores(q[:, :, q0:q1], k, call.scale, call.allowed(q0, q1))  # noqa: E731
        return Rows(out[:, :, q0:q1], None, empty[:, :, q0:q1], Chunk(q0, q1, nk, slice(0, nk), p, scores_fn=scores))

    return run_chunks(q, nk, out.shape[-1], step, chunk=call.chunk, sinks=call.sinks, want_probs=call.want_probs,
                      want_lse=False)


def key_masked(x: torch.Tensor, key_ok) -> torch.Tensor:
    """Scores (..., Nk) with -inf on keys no query may see. key_ok (B,H,Nk) or None."""
    return x if key_ok is None else x.masked_fill(~key_ok[:, :, None, :], NEG_INF)


# ---------------------------------------------------------------------------------------------
# 20. linear_efficient
# ---------------------------------------------------------------------------------------------


@register
class LinearEfficient(Approximation):
    """Efficient Attention (Shen, Zhang, Zhao, Yi & Li, 2021, WACV, arXiv:1812.01243).

    out = ρ_q(Q) (ρ_k(K)ᵀ V), ρ_q a softmax over the features of each query, ρ_k a softmax over
    the positions of each key feature (masked keys excluded). No scale, as in the paper.
    Implied attention A = ρ_q(Q) ρ_k(K)ᵀ: rows sum to 1. Bidirectional models only: the softmax
    over positions has no causal form.
    """

    name = "linear_efficient"
    applies_to = BIDIRECTIONAL

    def attend(self, call):
        q, k, v = call.q, call.k, call.v
        B, H, N, _ = q.shape
        key_ok, row_ok = model_masks(call, self.name)
        q_feat = torch.softmax(q.float(), dim=-1)  # (B,H,N,D)
        k_pos = softmax_lse(key_masked(k.float().transpose(-1, -2), key_ok))[0]  # (B,H,D,Nk)
        context = torch.matmul(k_pos, v.float())  # (B,H,D,Dv)
        out = torch.matmul(q_feat, context)

        def rows(q0, q1):
            return torch.matmul(q_feat[:, :, q0:q1], k_pos)

        return finish(call, out, empty_rows(row_ok, B, H, N, q.device), rows)


# ---------------------------------------------------------------------------------------------
# 21. focused_linear
# ---------------------------------------------------------------------------------------------


def focus(x: torch.Tensor, p: float) -> torch.Tensor:
    """FLatten's focusing map φ(x) = ‖x⁺‖ · (x⁺)^p / ‖(x⁺)^p‖, x⁺ = ReLU(x), along the last axis.

    Computed on x⁺ / max(x⁺) (φ is unchanged by that scaling) so large p cannot overflow; φ(x) = 0
    when x has no positive entry."""
    pos = torch.relu(x.float())
    peak = pos.amax(-1, keepdim=True)
    powered = (pos / torch.where(peak > 0, peak, 1.0)).pow(p)
    norm_p = powered.norm(dim=-1, keepdim=True)
    return torch.where(norm_p > 0, pos.norm(dim=-1, keepdim=True) * powered / norm_p.clamp_min(1e-30), 0.0)


@register
class FocusedLinear(Approximation):
    """Focused linear attention of FLatten (Han, Pan, Han, Song & Huang, 2023, ICCV, arXiv:2308.00442).

    φ(x) = ‖x⁺‖·(x⁺)^p/‖(x⁺)^p‖ with x⁺ = ReLU(x);
    out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j), over allowed keys (causal: j ≤ i,
    by prefix sums carried across query chunks). The depthwise convolution FLatten adds on V is a
    trained module and is left out. Implied attention A_ij = φ(q_i)·φ(k_j) / φ(q_i)ᵀ Σ_j φ(k_j).
    A row whose denominator is 0 (φ(q_i) = 0, or no overlap with any visible φ(k_j)) gives a zero
    output and is flagged empty. The model's scale plays no part (the ratio cancels it).
    """

    name = "focused_linear"
    applies_to = ALL_KINDS
    params = (Param("p", float, 3.0, "focusing power", low=1.0, high=16.0),)

    def attend(self, call):
        q, k, v = call.q, call.k, call.v
        B, H, N, _ = q.shape
        Nk = k.shape[2]
        causal = call.ctx.causal and N == Nk
        key_ok, row_ok = model_masks(call, self.name, causal=causal)
        phi_q = focus(q, self.p)  # (B,H,N,D)
        phi_k = focus(k, self.p)
        if key_ok is not None:
            phi_k = phi_k * key_ok[..., None]
        vf = v.float()
        if causal:
            num, den = causal_linear(phi_q, phi_k, vf, call.chunk)
        else:
            num = torch.matmul(phi_q, torch.matmul(phi_k.transpose(-1, -2), vf))  # (B,H,N,Dv)
            den = torch.matmul(phi_q, phi_k.sum(-2)[..., None])[..., 0]  # (B,H,N)
        empty = empty_rows(row_ok, B, H, N, q.device) | ~(den > 0)
        safe_den = torch.where(den > 0, den, 1.0)
        out = num / safe_den[..., None]

        def rows(q0, q1):
            a = torch.matmul(phi_q[:, :, q0:q1], phi_k.transpose(-1, -2))  # (B,H,c,Nk)
            if causal:
                later = torch.arange(Nk, device=q.device)[None, :] > torch.arange(q0, q1, device=q.device)[:, None]
                a = a.masked_fill(later, 0.0)
            return a / safe_den[:, :, q0:q1, None]

        return finish(call, out, empty, rows)


def causal_linear(phi_q, phi_k, v, chunk: int):
    """Causal linear attention by chunks: numerator Σ_{j≤i} (φq_i·φk_j) v_j (B,H,N,Dv) and
    denominator Σ_{j≤i} φq_i·φk_j (B,H,N). Memory O(chunk² + D·Dv) besides the outputs."""
    B, H, N, D = phi_q.shape
    num = v.new_empty(B, H, N, v.shape[-1])
    den = v.new_empty(B, H, N)
    state = v.new_zeros(B, H, D, v.shape[-1])  # Σ φ(k_j) v_jᵀ over earlier chunks
    total = v.new_zeros(B, H, D)  # Σ φ(k_j) over earlier chunks
    for q0 in range(0, N, chunk):
        q1 = min(N, q0 + chunk)
        qc, kc, vc = phi_q[:, :, q0:q1], phi_k[:, :, q0:q1], v[:, :, q0:q1]
        a = torch.matmul(qc, kc.transpose(-1, -2)).tril()  # (B,H,c,c), j ≤ i inside the chunk
        num[:, :, q0:q1] = torch.matmul(qc, state) + torch.matmul(a, vc)
        den[:, :, q0:q1] = torch.matmul(qc, total[..., None])[..., 0] + a.sum(-1)
        state = state + torch.matmul(kc.transpose(-1, -2), vc)
        total = total + kc.sum(-2)
    return num, den


# ---------------------------------------------------------------------------------------------
# 22. agent
# ---------------------------------------------------------------------------------------------


def agent_tokens(q: torch.Tensor, ctx: TokenContext, side: int) -> torch.Tensor:
    """Agents: the patch queries average-pooled on the grid to min(side, rows) × min(side, cols)
    cells (adaptive average pooling). q (B,H,N,D) -> (B,H,n_agents,D). Special tokens are not pooled."""
    B, H, _, D = q.shape
    rows, cols = ctx.grid
    patch = (~ctx.special).nonzero().squeeze(-1).to(q.device)
    flat = (ctx.row * cols + ctx.col).to(q.device)[patch]
    grid = q.new_zeros(B, H, rows * cols, D, dtype=torch.float32)
    grid[:, :, flat] = q[:, :, patch].float()
    grid = grid.reshape(B * H, rows, cols, D).permute(0, 3, 1, 2)  # (B·H, D, rows, cols)
    pooled = F.adaptive_avg_pool2d(grid, (min(side, rows), min(side, cols)))
    return pooled.reshape(B, H, D, -1).transpose(-1, -2)


@register
class Agent(Approximation):
    """Agent Attention (Han, Ye, Han, Pan, Song & Huang, 2024, ECCV, arXiv:2312.08874).

    Agents A = the patch queries average-pooled on the grid to √n × √n (e.g. 7×7 for n = 49; a
    grid smaller than √n on a side keeps its own size on that side). V_A = softmax(A Kᵀ·scale) V
    (agents read every allowed key, the special tokens' included), out = softmax(Q Aᵀ·scale) V_A
    for every query. Special tokens (CLS, ...) are not pooled into agents; as queries they read
    from the agents like the patches, so CLS stays global in that every token reaches every key
    through the agents, but it is no longer exact. The paper's agent bias and depthwise
    convolution are trained modules and are left out.
    Implied attention softmax(Q Aᵀ·scale) softmax(A Kᵀ·scale): rows sum to 1.
    """

    name = "agent"
    applies_to = frozenset({"vit"})
    params = (Param("agents", int, 49, "number of agents, a square (√n × √n grid)", low=1),)

    def __init__(self, **values):
        super().__init__(**values)
        if math.isqrt(self.agents) ** 2 != self.agents:
            raise VariantError(f"agent: agents={self.agents} must be a perfect square (a side × side grid of agents)")

    def attend(self, call):
        q, k, v, scale = call.q, call.k, call.v, call.scale
        B, H, N, _ = q.shape
        key_ok, row_ok = model_masks(call, self.name)
        agents = agent_tokens(q, call.dctx, math.isqrt(self.agents))  # (B,H,n,D)
        agent_reads = softmax_lse(key_masked(masked_scores(agents, k, scale, None), key_ok))[0]  # (B,H,n,Nk)
        agent_values = torch.matmul(agent_reads, v.float())  # (B,H,n,Dv)
        query_reads = torch.softmax(masked_scores(q, agents, scale, None), dim=-1)  # (B,H,N,n)
        out = torch.matmul(query_reads, agent_values)

        def rows(q0, q1):
            return torch.matmul(query_reads[:, :, q0:q1], agent_reads)

        return finish(call, out, empty_rows(row_ok, B, H, N, q.device), rows)


# ---------------------------------------------------------------------------------------------
# 23. linformer
# ---------------------------------------------------------------------------------------------


def random_projection(k: int, n: int, seed: int) -> torch.Tensor:
    """E (k, n) with entries N(0, 1/k), the same for a given (k, n, seed)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, n, generator=gen) / math.sqrt(k)


@register
class Linformer(Approximation):
    """Linformer with fixed projections (Wang, Li, Khabsa, Fang & Ma, 2020, arXiv:2006.04768).

    K' = E K, V' = E V with E (k × N), k ≤ N (a larger k is cut to N):
    proj="mean": E averages k contiguous near-equal segments of the sequence (segment of token j:
    ⌊j·k/N⌋), over the keys the model lets some query see; proj="random": E_sj ~ N(0, 1/k) drawn
    from `seed` (one E shared by every head and layer, columns of masked keys zeroed).
    out = softmax(Q K'ᵀ·scale) V'; implied attention softmax(Q K'ᵀ·scale) E (rows sum to 1 for
    "mean"; not for "random", whose E has no such property). The projection runs over the whole
    sequence, special tokens included, as in the paper. Bidirectional models only.
    """

    name = "linformer"
    applies_to = BIDIRECTIONAL
    params = (
        Param("k", int, 64, "projected length", low=1),
        Param("proj", str, "mean", "projection E", choices=("mean", "random")),
        Param("seed", int, 0, "seed of the random projection", low=0),
    )

    def attend(self, call):
        q, k, v, scale = call.q, call.k, call.v, call.scale
        B, H, N, _ = q.shape
        Nk = k.shape[2]
        key_ok, row_ok = model_masks(call, self.name)
        n_proj = min(self.k, Nk)
        if self.proj == "mean":
            segment = torch.arange(Nk, device=q.device) * n_proj // Nk
            k_proj, count = group_mean(k, segment, n_proj, key_ok)  # (B,H,k,D), (B,H,k)
            v_proj, _ = group_mean(v, segment, n_proj, key_ok)
            proj_ok = count > 0
            spread = torch.where(proj_ok, 1.0 / count.clamp_min(1e-30), 0.0)  # E_sj = spread_s on segment s

            def project_rows(p):  # (B,H,c,k) -> (B,H,c,Nk)
                e = spread[:, :, None, segment] * (1.0 if key_ok is None else key_ok[:, :, None, :])
                return p[..., segment] * e
        else:
            e = random_projection(n_proj, Nk, self.seed).to(q.device)[None, None]  # (1,1,k,Nk)
            if key_ok is not None:
                e = e * key_ok[:, :, None, :]
            k_proj, v_proj = torch.matmul(e, k.float()), torch.matmul(e, v.float())
            proj_ok = None if key_ok is None else key_ok.any(-1, keepdim=True).expand(B, H, n_proj)

            def project_rows(p):
                return torch.matmul(p, e)

        s = masked_scores(q, k_proj, scale, None if proj_ok is None else proj_ok[:, :, None, :])  # (B,H,N,k)
        reads = softmax_lse(s)[0]
        out = torch.matmul(reads, v_proj)
        empty = empty_rows(row_ok, B, H, N, q.device)
        if proj_ok is not None:
            empty = empty | ~proj_ok.any(-1, keepdim=True)

        def rows(q0, q1):
            return project_rows(reads[:, :, q0:q1])

        return finish(call, out, empty, rows)


# ---------------------------------------------------------------------------------------------
# 24. kv_pool_2d
# ---------------------------------------------------------------------------------------------


def pool_groups(ctx: TokenContext, r: int) -> tuple[torch.Tensor, int]:
    """Pooled key of each token (N,) and their number: special tokens first, each its own key,
    then one key per r×r grid cell (cells at the right and bottom edges may be smaller)."""
    n_special = int(ctx.special.sum())
    rows, cols = ctx.grid
    cells_per_row = -(-cols // r)
    cell = (ctx.row // r) * cells_per_row + ctx.col // r
    special_rank = torch.cumsum(ctx.special.long(), 0) - 1
    group = torch.where(ctx.special, special_rank, n_special + cell)
    return group, n_special + -(-rows // r) * cells_per_row


@register
class KVPool2D(Approximation):
    """Spatial-reduction attention: Twins (Chu et al., 2021, arXiv:2104.13840), after PVT (Wang
    et al., 2021, arXiv:2102.12122); EDAFormer (Yu et al., 2024) pools the same way.

    K and V are average-pooled over r×r cells of the patch grid (edge cells may be smaller and
    average their own tokens); each special token (CLS, ...) stays its own key.
    out = softmax(Q K_poolᵀ·scale) V_pool. Implied attention spreads each pooled key's weight
    evenly over the tokens of its cell, so rows sum to 1 and out = A @ v. r=1 is full attention.
    """

    name = "kv_pool_2d"
    applies_to = frozenset({"vit"})
    params = (Param("r", int, 2, "cell side in patches", low=1),)

    def attend(self, call):
        q, k, v, scale, chunk = call.q, call.k, call.v, call.scale, call.chunk
        B, H, N, _ = q.shape
        Nk = k.shape[2]
        if Nk != call.ctx.n:
            raise VariantError("kv_pool_2d needs self-attention over the ViT's tokens")
        key_ok, row_ok = model_masks(call, self.name)
        group, n_groups = pool_groups(call.ctx, self.r)
        group = group.to(q.device)
        k_pool, count = group_mean(k, group, n_groups, key_ok)  # (B,H,G,D), (B,H,G)
        v_pool, _ = group_mean(v, group, n_groups, key_ok)
        pooled_ok = count > 0

        def reads(q0, q1):  # (B,H,c,G): N×N/r² in all, so one query chunk at a time
            return softmax_lse(masked_scores(q[:, :, q0:q1], k_pool, scale, pooled_ok[:, :, None, :]))[0]

        out = torch.cat([torch.matmul(reads(q0, q1), v_pool) for q0, q1 in chunk_ranges(N, chunk)], dim=2)
        empty = empty_rows(row_ok, B, H, N, q.device)
        share = torch.where(pooled_ok, 1.0 / count.clamp_min(1e-30), 0.0)[:, :, group]  # (B,H,Nk)
        if key_ok is not None:
            share = share * key_ok

        def rows(q0, q1):
            return reads(q0, q1)[..., group] * share[:, :, None, :]

        return finish(call, out, empty, rows)


# ---------------------------------------------------------------------------------------------
# 25. delta_correction
# ---------------------------------------------------------------------------------------------

DEFAULT_INNER = "sliding_window:w=64,sinks=4"


class _CorrectedProbs:
    """A sink for the inner run: turns each chunk of inner probabilities p_i into the corrected
    p_i + (P_full[g] − p_g), g the anchor row of i's group, stores them and hands them on.
    Chunks arrive in order (kernels.core.run_chunks runs them so)."""

    def __init__(self, call, every: int, empty):
        self.call, self.every, self.sinks = call, every, call.sinks
        self.empty = empty  # (B,H,N) rows the model masks completely: zero
        B, H, N, _ = call.q.shape
        self.probs = call.q.new_empty(B, H, N, call.k.shape[2], dtype=torch.float32) if call.want_probs else None
        self.carry = None  # (B,H,1,Nk): correction row of the last group of the previous chunk

    def __call__(self, chunk: Chunk) -> None:
        q0, q1, every = chunk.q0, chunk.q1, self.every
        p, dev = chunk.wide(chunk.p, 0.0), chunk.p.device
        parts = [] if q0 % every == 0 else [self.carry]  # group of q0 started in the previous chunk
        first = -(-q0 // every) * every  # the first anchor row at or after q0
        anchors = torch.arange(first, max(first, q1), every, device=dev)
        if len(anchors):
            parts.append(self.call.full_rows(anchors) - p[:, :, anchors - q0])
        correction = torch.cat(parts, dim=2)  # (B,H,groups in chunk,Nk)
        group = torch.arange(q0, q1, device=dev) // every - q0 // every
        corrected = (p + correction[:, :, group]).masked_fill(self.empty[:, :, q0:q1, None], 0.0)
        self.carry = correction[:, :, -1:]
        if self.probs is not None:
            self.probs[:, :, q0:q1] = corrected
        wide = Chunk(q0, q1, chunk.nk, slice(0, chunk.nk), corrected,
                     scores_fn=lambda: chunk.wide(chunk.scores, NEG_INF))
        for sink in self.sinks:
            sink(wide)


@register
class DeltaCorrection(Approximation):
    """Δ attention (Willette, Lee & Hwang, 2025, arXiv:2505.11254).

    Wraps a sparse variant `inner`: the inner variant runs for every query; every `every`-th
    query row g (rows 0, every, 2·every, ...) also runs full attention, and Δ_g = full_out_g −
    sparse_out_g is added to the outputs of all rows of its group (g .. g+every−1). Row g is the
    first of its group, so on a causal model no row receives information from a future key.
    Spec syntax: the inner variant goes in square brackets, which keep its own ':' and ','
    intact, e.g. `delta_correction:inner=[sliding_window:w=64,sinks=4],every=64`; a bare name
    (`inner=topk`) needs none. The default inner is `sliding_window:w=64,sinks=4`.
    Implied attention p_i + (P_full[g] − p_g) (rows sum to 1 when none is empty; entries may be
    negative); the scores handed to sinks are the inner variant's. A row the model's mask empties
    stays empty (zero, no Δ); a row is also empty when its inner row is empty and its group's Δ
    is zero. The variant applies wherever the inner one does, and needs a calibration pass when
    the inner one does (calibrate() forwards to it).
    """

    name = "delta_correction"
    applies_to = ALL_KINDS
    honours_native = True  # the inner variant and the anchor rows run through the softmax path
    params = (
        Param("inner", str, DEFAULT_INNER, "the sparse variant corrected, in [brackets] when it has parameters"),
        Param("every", int, 64, "one full-attention query row per this many rows", low=1),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.inner_variant, self.values["inner"] = parse_inner(self.name, self.values["inner"])
        self.needs_calibration = bool(getattr(self.inner_variant, "needs_calibration", False))

    def check(self, ctx: TokenContext) -> None:
        super().check(ctx)
        self.inner_variant.check(ctx)

    def calibrate(self, q0, q1, probs, scores, ctx):
        if not self.needs_calibration:
            return {}
        return self.inner_variant.calibrate(q0, q1, probs, scores, ctx)

    def attend(self, call):
        q, v, chunk = call.q, call.v, call.chunk
        B, H, N, _ = q.shape
        every = self.every
        _, row_ok = mask_coverage(call.allowed, B, H, N, call.k.shape[2], chunk, q.device)
        masked_rows = empty_rows(row_ok, B, H, N, q.device)
        tracker = _CorrectedProbs(call, every, masked_rows) if call.want_probs or call.sinks else None
        sparse = call.run(self.inner_variant, want_probs=False, sinks=(tracker,) if tracker is not None else ())
        anchors = torch.arange(0, N, every, device=q.device)
        full_out = torch.cat([torch.matmul(call.full_rows(anchors[a0:a1]), v.float())
                              for a0, a1 in chunk_ranges(len(anchors), chunk)], dim=2)  # (B,H,G,Dv)
        delta = full_out - sparse.out[:, :, anchors]
        group = torch.arange(N, device=q.device) // every
        out = sparse.out + delta[:, :, group]
        empty = masked_rows | (sparse.empty & (delta == 0).all(-1)[:, :, group])
        return AttnOut(out=out.masked_fill(empty[..., None], 0.0), lse=None, empty=empty,
                       probs=tracker.probs if tracker else None)
