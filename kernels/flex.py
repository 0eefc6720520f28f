"""FlexAttention adapter: static masks and score modifiers through torch's FlexAttention.

The variants' mask_mod / score_mod already follow FlexAttention's (b, h, q_idx, kv_idx)
convention, so this module only composes them with causality and a model mask, and calls
torch.nn.attention.flex_attention:

  dense_mask(variant, ctx)                    -> bool (H or 1, N, N), built with create_mask
  flex_attention(q, k, v, variant, ctx, scale) -> AttnOut, the same meaning as kernels.reference
  flex_snippet(variant, ctx_kind)             -> str, code to paste into training code

On CPU, torch 2.14 runs flex_attention eagerly (an unfused path that materialises the scores)
or compiled through inductor (a C++ compiler; ~20 s to compile, then fast). Here flex_attention
compiles on CUDA and runs eagerly on CPU unless told otherwise; a failed compilation falls back to
the eager path, which means the same.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch.nn.attention import flex_attention as _fa

from kernels.context import KINDS, TokenContext
from kernels.reference import AttnOut
from kernels.variants.base import Variant, VariantError

_EAGER_WARNING = "flex_attention called without torch.compile"
_compiled = None  # torch.compile(flex_attention), built on first use


def _no_flex_form(variant: Variant) -> VariantError:
    return VariantError(f"{variant.name} is not a static mask or score modifier; it has no FlexAttention form")


def _require_flex_form(variant: Variant) -> None:
    """Refuse variants that change more than a mask and a score bias."""
    if any(getattr(variant, hook) is not None for hook in ("row_mask", "row_probs", "attend")):
        raise _no_flex_form(variant)


def combined_mask_mod(variant: Variant, ctx: TokenContext, n_kv: int | None = None, keep: torch.Tensor | None = None):
    """The variant's mask_mod AND causality (causal self-attention) AND `keep`; None when nothing is masked.

    keep: an optional bool (B, H, N, Nk) indexed as keep[b, h, q_idx, kv_idx], e.g. the model's padding
    mask (expand a broadcastable mask first; flex_attention does).
    """
    n_kv = ctx.n if n_kv is None else n_kv
    parts = []
    variant_mask = variant.mask_mod(ctx)
    if variant_mask is not None:
        parts.append(variant_mask)
    if ctx.causal and n_kv == ctx.n:
        parts.append(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
    if keep is not None:
        parts.append(lambda b, h, q_idx, kv_idx: keep[b, h, q_idx, kv_idx])
    if not parts:
        return None
    return _fa.and_masks(*parts)


def dense_mask(variant: Variant, ctx: TokenContext, n_heads: int | None = None) -> torch.Tensor:
    """bool (H or 1, N, N): True where query i keeps key j, from the variant's mask_mod and, for a
    causal model, the causal mask; built with FlexAttention's create_mask (so through vmap)."""
    variant.check(ctx)
    mask_mod = combined_mask_mod(variant, ctx) or _fa.noop_mask
    return _fa.create_mask(mask_mod, 1, n_heads or 1, ctx.n, ctx.n, device=ctx.row.device)[0]


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    variant: Variant,
    ctx: TokenContext,
    scale: float,
    *,
    keep: torch.Tensor | None = None,
    compile: bool | None = None,
    block_size: int = 128,
) -> AttnOut:
    """Attention of q against k, v under a static mask / score modifier with torch's flex_attention.

    q (B, H, N, D); k, v (B, H, Nk, D) with as many heads as q. keep: optional bool mask
    broadcastable to (B, H, N, Nk) (the model's own mask). compile: run torch.compile'd flex_attention
    (None: on CUDA only — the eager path materialises every score, and compiling on CPU takes ~20 s).
    Computes in float32; rows whose keys are all masked give zeros, lse −∞ and empty=True, as
    kernels.reference.attention does.
    """
    _require_flex_form(variant)
    variant.check(ctx)
    ctx = ctx.to(q.device)
    B, H, N, _ = q.shape
    Nk = k.shape[2]
    if keep is not None:
        keep = keep.to(torch.bool).expand(B, H, N, Nk)
    mask_mod = combined_mask_mod(variant, ctx, Nk, keep)
    block_mask = None
    if mask_mod is not None:
        block_mask = _fa.create_block_mask(mask_mod, B if keep is not None else None, H if keep is not None else None,
                                           N, Nk, device=q.device, BLOCK_SIZE=block_size)
    call = dict(score_mod=variant.score_mod(ctx), block_mask=block_mask, scale=scale,
                return_aux=_fa.AuxRequest(lse=True))
    qf, kf, vf = q.float(), k.float(), v.float()
    out, aux = _run(qf, kf, vf, call, q.is_cuda if compile is None else compile)
    lse = aux.lse.float()
    empty = torch.isneginf(lse)
    out = out.float().masked_fill(empty[..., None], 0.0)
    return AttnOut(out=out, lse=lse, empty=empty)


def _run(q, k, v, call: dict, compile: bool):
    global _compiled
    if compile:
        try:
            if _compiled is None:
                _compiled = torch.compile(_fa.flex_attention)
            return _compiled(q, k, v, **call)
        except Exception as exc:  # no compiler, unsupported shape...: the eager path means the same
            warnings.warn(f"compiled flex_attention failed ({type(exc).__name__}: {exc}); running it eagerly",
                          RuntimeWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EAGER_WARNING)
        return _fa.flex_attention(q, k, v, **call)


# ---------------------------------------------------------------- the snippet

_SIZES_1D = '''N = {n}  # sequence length (queries and keys)
N_HEADS = {n_heads}  # attention heads
'''

_SIZES_VIT = '''GRID = {grid}  # patch grid (rows, cols)
N_PREFIX = {n_prefix}  # special tokens before the patches (CLS, registers...): they stay global
N = N_PREFIX + GRID[0] * GRID[1]
N_HEADS = {n_heads}  # attention heads
'''

_TOKENS_VIT = '''SPECIAL = torch.arange(N, device=DEVICE) < N_PREFIX  # (N,)
_cell = (torch.arange(N, device=DEVICE) - N_PREFIX).clamp(min=0)
ROW = torch.where(SPECIAL, -1, _cell // GRID[1])  # (N,) grid row of each token, -1 for special tokens
COL = torch.where(SPECIAL, -1, _cell % GRID[1])
'''


def _default_kind(variant: Variant) -> str:
    for kind in ("causal", "vit", "bidirectional"):
        if kind in variant.applies_to:
            return kind
    raise _no_flex_form(variant)


def flex_snippet(
    variant: Variant,
    ctx_kind: str | None = None,
    *,
    n: int = 1024,
    grid: tuple[int, int] = (14, 14),
    n_prefix: int = 1,
    n_heads: int = 12,
) -> str:
    """Self-contained FlexAttention code for `variant` on a model of kind `ctx_kind`.

    The code holds the imports, the sizes (n for 1D models; grid and n_prefix for a ViT — edit
    them to match your model), the rule functions, a mask_mod / score_mod with the parameter
    values baked in (auto parameters as expressions of the sizes), and the create_block_mask call.
    ctx_kind defaults to causal, else vit, else bidirectional, whichever the variant applies to.
    """
    kind = ctx_kind or _default_kind(variant)
    if kind not in KINDS:
        raise VariantError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
    source = variant.flex_source(kind)
    if source is None:
        raise _no_flex_form(variant)
    variant.check(TokenContext(n=1, kind=kind))
    vit = kind == "vit"

    parts = [
        f"# FlexAttention form of the attnscope variant `{variant.spec()}` for a {kind} model.\n"
        "# Generated by attnscope (kernels/flex.py). Edit the sizes below to match your model.\n"
        "import math\n\nimport torch\n"
        "from torch.nn.attention.flex_attention import create_block_mask, flex_attention\n",
        "DEVICE = \"cuda\" if torch.cuda.is_available() else \"cpu\"\n"
        + (_SIZES_VIT.format(grid=tuple(grid), n_prefix=n_prefix, n_heads=n_heads) + _TOKENS_VIT if vit
           else _SIZES_1D.format(n=n, n_heads=n_heads)),
    ]
    parts += [inspect.getsource(fn) for fn in _unique(source.functions)]

    mask_lines = []
    if source.mask is not None:
        mask_lines.append(f"    keep = {source.mask}")
        if vit:
            mask_lines.append("    keep = keep | SPECIAL[q_idx] | SPECIAL[kv_idx]  # special tokens stay global")
    if kind == "causal":
        mask_lines.append(("    keep = keep & (kv_idx <= q_idx)" if mask_lines else "    keep = kv_idx <= q_idx")
                          + "  # the model's causal mask")
    if mask_lines:
        parts.append("def mask_mod(b, h, q_idx, kv_idx):\n" + "\n".join(mask_lines) + "\n    return keep\n")
    if source.bias is not None:
        bias = f"torch.where(SPECIAL[q_idx] | SPECIAL[kv_idx], 0.0, {source.bias})" if vit else source.bias
        parts.append(f"def score_mod(score, b, h, q_idx, kv_idx):\n    return score + {bias}\n")

    use = []
    if mask_lines:
        use.append("block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=N, KV_LEN=N, device=DEVICE)")
    call = ", ".join(["q, k, v"] + (["score_mod=score_mod"] if source.bias is not None else [])
                     + (["block_mask=block_mask"] if mask_lines else []))
    use.append(f"# q, k, v: (batch, N_HEADS, N, head_dim) on DEVICE; wrap flex_attention in torch.compile for speed\n"
               f"# out = flex_attention({call})")
    parts.append("\n".join(use) + "\n")
    return "\n\n".join(p.rstrip("\n") + "\n" for p in parts)


def _unique(functions):
    seen = []
    for fn in functions:
        if fn not in seen:
            seen.append(fn)
    return seen
