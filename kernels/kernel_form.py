"""A variant's Triton kernel form: what a variant's own file declares (`Variant.kernel_form`) and the
kernels in kernels/triton/ run, so a new static mask or score modifier touches one file.

The kernels switch on named values (MASK_*, BIAS_*, SCORE_*: `tl.constexpr` in kernels/triton/)
and read the numbers of the form:

  mask   MASK_NONE    every key (then causality, specials and the model's key padding)
         MASK_RULE    `rule` — the variant's own rule function, the very one torch and FlexAttention
                      run (written for all three: operators and `abs` only, `//` and `%` on operands
                      that are never negative), called on token positions (q_idx, kv_idx) or, with
                      `rule_grid`, on grid cells (r_q, c_q, r_kv, c_kv), then its integer parameters
                      `ints` (at most 4) in order; ORed with "query or key is special"
         MASK_GROUP   table[g(i), g(j)] of a per-call group table (`content`: block_topk, routing_2d,
                      document, or any block-sparse table given with KernelSpec.block_sparse)
  score  SCORE_SOFTCAP  s ← cap·tanh(s / cap)
  bias   (added to s; zero on pairs with a special token)
         BIAS_DISTANCE  |i − j|·coef_h            decay_1d, alibi
         BIAS_MANHATTAN (|Δr| + |Δc|)·coef_h      manhattan_decay
         BIAS_GRID_D2   (Δr² + Δc²)·coef_h        gaussian_2d, one σ
         BIAS_D2_TABLE  table[Δr² + Δc²]          gaussian_2d, a mixture of σ's
  paths=2              polyline_path: ½·softmax(s + L) + ½·softmax(s + L') from per-head prefix-sum tables
  zero_heads           head_ablation: chosen heads' outputs zeroed

Nothing here imports Triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MASK_NONE, MASK_RULE, MASK_GROUP = 0, 1, 2
SCORE_NONE, SCORE_SOFTCAP = 0, 1
BIAS_NONE, BIAS_DISTANCE, BIAS_MANHATTAN, BIAS_GRID_D2, BIAS_D2_TABLE = 0, 1, 2, 3, 4
MAX_INTS = 4


@dataclass(eq=False)
class ContentTables:
    """Per-call tables. group: (group table (Bt, Ht, Gq, Gk) bool, q groups (N,), k groups (Nk,)).
    polyline: (row table (Bt, Ht, 2, rows·cols), column table (Bt, Ht, 2, rows·cols)) float64,
    natural-log units; index 0 the inclusive prefix sums, 1 the exclusive ones. Heads are kv heads."""

    group: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    polyline: tuple[torch.Tensor, torch.Tensor] | None = None


# content(q, k) -> ContentTables: the parts of a form that depend on q and k (computed per call)
ContentFn = Callable[[torch.Tensor, torch.Tensor], "ContentTables | None"]


@dataclass(eq=False)
class KernelSpec:
    """A variant's kernel form for one context; see the module docstring."""

    name: str = ""  # the variant spec string (cache key, messages)
    mask: int = MASK_NONE
    rule: Callable | None = None  # MASK_RULE
    rule_grid: bool = False
    ints: tuple[int, ...] = ()
    score: int = SCORE_NONE
    cap: float = 0.0  # SCORE_SOFTCAP
    bias: int = BIAS_NONE
    head_coef: Callable[[int], torch.Tensor] | None = None  # H -> float64 (H,): bias coefficient per query head
    d2_table: torch.Tensor | None = None  # float64 (T,): bias by squared cell distance
    paths: int = 1  # 2: polyline's two softmaxes
    causal: bool = False  # the context's causal mask (self-attention only); set by the kernels
    content: ContentFn | None = None
    zero_heads: tuple[int, ...] = ()
    uses_grid: bool = False  # the mask or bias reads grid cells

    def __post_init__(self):
        if self.mask == MASK_RULE and (len(self.ints) > MAX_INTS or not all(isinstance(x, int) for x in self.ints)):
            raise ValueError(f"a kernel rule takes at most {MAX_INTS} integer parameters, got {self.ints}")

    @property
    def key(self) -> tuple:
        return (self.name, self.mask, self.rule, self.rule_grid, self.ints, self.score, self.cap, self.bias,
                self.paths, self.causal)

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
