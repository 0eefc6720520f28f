"""The reference attention path: what every variant computes, in plain PyTorch (any device), and on
CPU the path of everything that records attention.

Per query chunk (kernels/core.py's loop): scores against only the keys its block plan keeps
(kernels/blocks.py), then in the models' own order (kernels/native.py) the soft cap, the key and
pair biases, the variant's score_mod, the masks of partial tiles and content rules, one softmax
with log-sum-exp (learned sinks in the normaliser), and the output — with, when a sink asks for
them, the row statistics from the same pass: entropy = lse·Σp − Σp·s and Σp·s = q·(Σ p k)·scale,
distance = i·Σp − Σ p·j on causal rows, max probability = exp(max s − lse), all read off one
matmul of the probabilities with [v | k | j]. Shapes: q (B, H, N, D); k, v (B, H, Nk, D), heads
already expanded for GQA. Memory is O(chunk × Nk) whatever N is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from kernels.blocks import PLANS, Allowed, ChunkPlan, allowed_fn, chunk_plan, model_mask_of
from kernels.context import TokenContext
from kernels.core import (
    AttnOut,
    Chunk,
    ChunkSink,
    Rows,
    and_masks,
    index_grid,
    learned_sink_mass,
    run_chunks,
    softmax_lse,
)
from kernels.errors import VariantError
from kernels.native import PLAIN, NativeAttention

__all__ = ["AttnOut", "ChunkSink", "Call", "attention", "allowed_fn", "index_grid", "tile_scores"]

CHUNK = 128  # query rows per chunk: measured best on CPU (its scores stay in cache)


@dataclass(eq=False)
class Call:
    """One attention call, as `Variant.attend` receives it.

    allowed(q0, q1) is the model's mask AND causality AND the variant's mask_mod over every key;
    run(variant, ...) runs another variant on the same q, k, v, mask and native attention;
    softmax(keep=, normalise=) runs the softmax path under an extra keep mask and/or another
    normaliser; full_rows(rows) gives exact probabilities of scattered rows under the model alone.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    ctx: TokenContext
    variant: object
    model_mask: object = None
    native: NativeAttention = PLAIN
    want_probs: bool = False
    want_lse: bool = True
    sinks: tuple = ()
    chunk: int = CHUNK

    @cached_property
    def dctx(self) -> TokenContext:
        return self.ctx.to(self.q.device)

    @cached_property
    def allowed(self) -> Allowed:
        B, H, _, _ = self.q.shape
        return allowed_fn(self.variant, self.dctx, self.model_mask, B, H, self.k.shape[2], self.q.device)

    def with_(self, **changes) -> Call:
        return replace(self, **changes)

    def run(self, variant, **changes) -> AttnOut:
        return _attend(replace(self, variant=variant, **changes))

    def softmax(self, keep=None, normalise=None, **changes) -> AttnOut:
        return softmax_attention(replace(self, **changes) if changes else self, keep=keep, normalise=normalise)

    def full_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Exact softmax probabilities (B, H, len(rows), Nk) of the given query rows under the model's
        mask, causality and native attention (the variant's own rules left out)."""
        B, H, _, _ = self.q.shape
        nk = self.k.shape[2]
        model = allowed_fn(_NoRule, self.dctx, self.model_mask, B, H, nk, self.q.device)
        masks = [model(r, r + 1) for r in rows.tolist()]
        keep = None if masks[0] is None else torch.cat([m.expand(B, H, 1, nk) for m in masks], dim=2)
        s = torch.matmul(self.q[:, :, rows].float() * self.scale, self.k.float().transpose(-1, -2))
        s = _native_scores(s, self.native, rows, slice(0, nk))
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        return softmax_lse(s, _sink_logits(self.native))[0]


class _NoRule:
    """A variant with no rule: what the model alone allows."""

    widens_mask = ""

    @staticmethod
    def mask_mod(ctx):
        return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    ctx: TokenContext,
    variant,
    model_mask=None,
    native: NativeAttention | None = None,
    want_probs: bool = False,
    want_lse: bool = True,
    sinks: tuple[ChunkSink, ...] = (),
    chunk: int = CHUNK,
) -> AttnOut:
    """Attention of q against k, v under `variant`, the model's mask and its native attention."""
    native = PLAIN if native is None else native
    return _attend(Call(q, k, v, scale, ctx, variant, model_mask, native, want_probs, want_lse, tuple(sinks), chunk))


def _attend(call: Call) -> AttnOut:
    variant = call.variant
    if not call.native.is_plain and not getattr(variant, "honours_native", True):
        raise VariantError(f"{variant.name} cannot honour this model's own {native_features(call.native)}; "
                          "pick a variant that keeps the softmax over scores")
    if variant.attend is not None:
        return variant.attend(call)
    return softmax_attention(call)


def native_features(native: NativeAttention) -> str:
    """The model's own score modifiers in words, e.g. "soft-capping and learned sinks"."""
    names = [name for name, on in (("soft-capping", native.softcap is not None),
                                   ("ALiBi key bias", native.key_bias is not None),
                                   ("relative position bias", native.pair_bias is not None),
                                   ("learned sinks", native.sink_logits is not None)) if on]
    return " and ".join(names) or "attention"


def _sink_logits(native: NativeAttention) -> torch.Tensor | None:
    """The learned sink logits as (1, H, 1, 1), to join the normaliser of (B, H, c, w) scores."""
    return None if native.sink_logits is None else native.sink_logits.float()[None, :, None, None]


def _native_scores(s: torch.Tensor, native: NativeAttention, rows, cols) -> torch.Tensor:
    """The model's own modifiers of the scores s (B, H, c, w) of query rows `rows` against keys `cols`, in place."""
    if native.softcap is not None:
        s.div_(native.softcap).tanh_().mul_(native.softcap)
    if native.key_bias is not None:
        s += native.key_bias.float()[..., cols][:, :, None, :]
    if native.pair_bias is not None:
        s += native.pair_bias.float()[:, :, rows][..., cols]
    return s


# ---------------------------------------------------------------- the softmax path


def softmax_attention(call: Call, keep=None, normalise=None) -> AttnOut:
    """The softmax path over block plans; see the module docstring.

    keep(q0, q1) -> bool (B|1, H|1, c, Nk): an extra content mask (routing_2d, block_topk), ANDed.
    normalise(s, q0, q1, kv_idx, sink) -> (p, shown scores, lse): another normaliser (top_theta,
    polyline_path) for the masked scores s of one chunk.
    """
    q, k, v = call.q, call.k, call.v
    B, H, N, D = q.shape
    nk, dv, dev = k.shape[2], v.shape[-1], q.device
    ctx, variant, native = call.dctx, call.variant, call.native
    plan_of = _planner(call, keep)
    score_mod = variant.score_mod(ctx)
    row_mask, row_probs = variant.row_mask, variant.row_probs
    weight = _head_weight(variant, call.ctx, H, dev)
    sink = _sink_logits(native)
    by_rule = row_mask is not None or normalise is not None or row_probs is not None  # content rules decide
    # the row statistics from this pass: a softmax of s (no content rule), see _row_stats
    fused = not by_rule and any(getattr(s, "wants_stats", False) for s in call.sinks)
    causal_1d = ctx.kind != "vit" and call.allowed.causal and not call.allowed.prefix
    qs = (q.float() * call.scale).reshape(B * H, N, D)  # 3-D views: torch.bmm is the fastest matmul here
    kt = k.float().transpose(-1, -2).reshape(B * H, D, nk)  # contiguous (D, Nk): a slice of keys stays BLAS-ready
    vf = v.float().reshape(B * H, nk, dv)
    record = bool(call.sinks) or call.want_probs

    def scores(q0: int, q1: int, plan: ChunkPlan) -> torch.Tensor:
        keys = kt[..., plan.cols] if isinstance(plan.cols, slice) else kt.index_select(-1, plan.cols)
        s = torch.bmm(qs[:, q0:q1], keys).view(B, H, q1 - q0, plan.width)
        s = _native_scores(s, native, slice(q0, q1), plan.cols)
        if score_mod is not None:
            b, h, qi, _ = index_grid(B, H, q0, q1, 0, dev)
            s = score_mod(s, b, h, qi, plan.kv_idx[None, None, None, :])
        plan.mask_scores(s)
        if row_mask is not None:  # content rules only ever remove keys: the model's mask is never widened
            s.masked_fill_(~row_mask(s, torch.arange(q0, q1, device=dev), plan.kv_idx, ctx), float("-inf"))
        return s

    def step(q0: int, q1: int) -> Rows:
        plan = plan_of(q0, q1)
        s = scores(q0, q1, plan)
        shown = None
        if normalise is not None:
            p, shown, lse = normalise(s, q0, q1, plan.kv_idx, sink)
            dead = ~(p.sum(-1) > 0)  # a row the normaliser gives no weight is empty
        elif row_probs is not None:
            _, lse, top = softmax_lse(s, sink)  # the recorded lse stays that of the softmax
            p = _row_probs(row_probs, s, sink, torch.arange(q0, q1, device=dev), plan.kv_idx, ctx)
            shown, dead = s, torch.isneginf(top)
        else:
            p, lse, top = softmax_lse(s, sink)
            dead = torch.isneginf(top)
        values = vf[:, plan.cols] if isinstance(plan.cols, slice) else vf.index_select(1, plan.cols)
        out = torch.bmm(p.reshape(B * H, q1 - q0, plan.width), values).view(B, H, q1 - q0, dv)
        stats = _row_stats(p, s.nan_to_num_(neginf=0.0), lse, top, dead, plan, q0, q1, sink, causal_1d) \
            if fused else None
        if weight is not None:
            out, p = out * weight, p * weight
            stats = None if stats is None else {name: x * weight[..., 0] for name, x in stats.items()}
        chunk = None
        if record:
            mass = None
            if sink is not None:  # the share the learned sink took, however the row was normalised
                mass = learned_sink_mass(lse, sink) if shown is None else (1 - p.sum(-1)).clamp_min(0.0)
                mass = mass if weight is None else mass * weight[..., 0]
            chunk = Chunk(q0, q1, nk, plan.cols, p, lse, stats, mass,
                          scores_fn=lambda: plan.mask_scores(s) if shown is None else shown, _scores=shown,
                          kept_fn=None if by_rule else lambda: _plan_kept(plan, q1 - q0))
        return Rows(out, lse, dead, chunk)

    return run_chunks(q, nk, dv, step, chunk=call.chunk, sinks=call.sinks, want_probs=call.want_probs,
                      want_lse=call.want_lse)


def _row_stats(p, s, lse, top, dead, plan: ChunkPlan, q0: int, q1: int, sink, causal_1d: bool) -> dict:
    """kernels.maps.STATS of a softmax chunk from quantities this pass already has: entropy = lse·Σp − Σ p·s,
    max probability = exp(max s − lse), distance = i·Σp − Σ p·j on causal 1D rows (every kept j ≤ i).
    s: the scores with masked entries 0 (p is 0 there; the plain softmax path masks nothing else)."""
    mass = torch.where(dead, 0.0, 1.0) if sink is None else torch.where(dead, 0.0, 1.0 - learned_sink_mass(lse, sink))
    safe_lse = torch.where(dead, 0.0, lse)
    stats = {
        "entropy": torch.where(dead, 0.0, safe_lse * mass - torch.einsum("bhcw,bhcw->bhc", p, s)),
        "maxp": torch.where(dead, 0.0, torch.exp(top - safe_lse)),
        "sink": p[..., 0] if int(plan.kv_idx[0]) == 0 else torch.zeros_like(lse),
    }
    if causal_1d:
        i = torch.arange(q0, q1, device=p.device, dtype=torch.float32)
        stats["distance"] = i * mass - torch.matmul(p, plan.kv_idx.to(p.dtype))
    return stats


def _planner(call: Call, keep=None):
    """plan_of(q0, q1) -> ChunkPlan under the call's static mask AND `keep` (a content mask, not cached)."""
    allowed, dev = call.allowed, call.q.device
    plans = _plans(call) if keep is None else {}

    def plan_of(q0: int, q1: int) -> ChunkPlan:
        plan = plans.get(q0)
        if plan is None:
            hi = allowed.reach(q1)
            mask = allowed(q0, q1, hi)
            if keep is not None:
                mask = and_masks(mask, keep(q0, q1)[..., :hi])
            plan = plans[q0] = chunk_plan(mask, hi, dev)
        return plan

    return plan_of


def sdpa_chunks(call: Call) -> AttnOut:
    """Output only under a static mask: fused SDPA per query chunk over the keys its block plan keeps."""
    q, k, v = call.q, call.k, call.v
    B, H, N, _ = q.shape
    plan_of = _planner(call)

    def step(q0: int, q1: int) -> Rows:
        plan = plan_of(q0, q1)
        bias = plan.dense_bias()  # additive: SDPA keeps its fused kernel (a bool mask is converted per call)
        out = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, q0:q1], k[:, :, plan.cols], v[:, :, plan.cols], attn_mask=bias, scale=call.scale)
        dead = torch.zeros(B, H, q1 - q0, dtype=torch.bool, device=q.device)
        if bias is not None:  # SDPA gives NaN rows where every key is masked; we promise zeros
            dead = ~plan.dense_keep().any(-1).expand(B, H, q1 - q0)
            out = out.masked_fill(dead[..., None], 0.0)
        return Rows(out, None, dead)

    return run_chunks(q, k.shape[2], v.shape[-1], step, chunk=call.chunk, want_lse=False)


def _plan_kept(plan: ChunkPlan, rows: int) -> torch.Tensor:
    """What the plan keeps, broadcastable to (B, H, c, w): the chunk's scores that are not masked."""
    keep = plan.dense_keep()
    return torch.ones(1, 1, rows, plan.width, dtype=torch.bool, device=plan.kv_idx.device) if keep is None else keep


def _plans(call: Call) -> dict:
    """The plan dict of this call's static mask: shared by every layer of one forward pass."""
    ctx, variant = call.ctx, call.variant
    if getattr(variant, "mask_depends_on_layer", False):
        return {}
    model_mask = model_mask_of(call.model_mask, ctx)
    B, H, N, _ = call.q.shape
    held = (variant, model_mask, ctx.special, ctx.token_ids)
    key = (tuple(map(id, held)), ctx.n, ctx.kind, ctx.grid, ctx.n_heads, B, H, N, call.k.shape[2], call.chunk,
           str(call.q.device))
    return PLANS.plans(held, key)


def _head_weight(variant, ctx, heads: int, device) -> torch.Tensor | None:
    """(1, H, 1, 1) weight of each head's output and probabilities (head_ablation), or None."""
    weight = variant.head_weight(ctx, heads)
    return None if weight is None else weight.to(device=device, dtype=torch.float32)[None, :, None, None]


def _row_probs(row_probs, s, sink, q_idx, kv_idx, ctx) -> torch.Tensor:
    """A content normaliser over the masked scores; a learned sink joins it as one more key with no value."""
    if sink is None:
        return row_probs(s, q_idx, kv_idx, ctx)
    sink_col = sink.expand(*s.shape[:-1], 1)
    p = row_probs(torch.cat([s, sink_col], dim=-1), q_idx, torch.cat([kv_idx, kv_idx.new_tensor([-1])]), ctx)
    return p[..., :-1]


# ---------------------------------------------------------------- tiles


def tile_scores(q, k, rows: tuple[int, int], cols: tuple[int, int], *, scale: float, ctx: TokenContext, variant,
                model_mask=None, native: NativeAttention | None = None) -> torch.Tensor:
    """The masked, modified scores (B, H, q1 − q0, k1 − k0) of one tile, −inf where masked, as the softmax
    path computes them (no content rule: those need whole rows)."""
    (q0, q1), (k0, k1) = rows, cols
    native = PLAIN if native is None else native
    B, H, _, _ = q.shape
    dctx = ctx.to(q.device)
    allowed = allowed_fn(variant, dctx, model_mask, B, H, k.shape[2], q.device)
    s = torch.matmul(q[:, :, q0:q1].float() * scale, k[:, :, k0:k1].float().transpose(-1, -2))
    s = _native_scores(s, native, slice(q0, q1), slice(k0, k1))
    score_mod = variant.score_mod(dctx)
    if score_mod is not None:
        b, h, qi, kj = index_grid(B, H, q0, q1, k1, q.device)
        s = score_mod(s, b, h, qi, kj[..., k0:k1])
    keep = allowed(q0, q1, k1)
    if keep is not None:
        s = s.masked_fill(~keep[..., k0:k1], float("-inf"))
    return s
