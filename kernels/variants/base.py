"""Variant objects: named, typed, validated parameters plus the maths hooks.

A variant changes attention through at most these hooks (all optional):
  mask_mod(ctx)   -> f(b, h, q_idx, kv_idx) -> bool   keep (True) or mask a score; static
  score_mod(ctx)  -> f(score, b, h, q_idx, kv_idx)    change a score (add a bias, cap it)
  row_mask(s, q_idx, kv_idx, ctx) -> keep              content-dependent pruning (top-k, ...) of the
                                                       masked scores s (B, H, c, w) of keys kv_idx (w,)
  row_probs(s, q_idx, kv_idx, ctx) -> probs            a different normaliser (entmax, relaxed, ...)
  head_weight(ctx, heads) -> (H,) or None              scale each head's output and maps (head_ablation)
  kernel_form(ctx) -> KernelSpec or None               its form in the Triton kernels (kernels/kernel_form.py)
  attend(call) -> AttnOut                              replaces the whole computation; `call` is a
                                                       kernels.reference.Call (q, k, v, the mask, the
                                                       model's own attention, sinks, and the engine)
Index functions follow FlexAttention's convention so the same function drives the
reference path, FlexAttention and the mask views. They must only use broadcasting torch ops.
Every variant is applied on top of the model's own mask and score modifiers (kernels/native.py);
only one that says so in `widens_mask` (prefix_lm) may widen the model's mask, and one that cannot
honour the model's own score modifiers sets `honours_native = False` and is refused on such models.

A parameter whose default is None is "auto": its value depends on the model and is resolved
from the TokenContext by `Variant.auto_value` (see `Variant.resolved`).
Static masks and pure score modifiers also describe themselves as FlexAttention source
(`flex_source`), from which `flex_snippet()` writes code a user can paste into training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kernels.context import TokenContext
from kernels.errors import VariantError
from kernels.snippet import FlexSource, flex_snippet

__all__ = ["FlexSource", "Param", "Variant", "VariantError"]


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    low_open: bool = False  # True: the bound `low` itself is excluded, e.g. (0, 1]
    high_open: bool = False
    auto: str = ""  # default None only: how the automatic value is chosen, e.g. "⌈√N⌉"

    def allowed(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.type is bool:
            text = "true or false"
        elif self.low is None and self.high is None and self.type not in (int, float):
            text = f"{_article(self.type.__name__)} {self.type.__name__}"
        else:
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{_article(self.type.__name__)} {self.type.__name__} in {opening}{lo}, {hi}{closing}"
        if self.default is None:
            text += f", or auto (the default{': ' + self.auto if self.auto else ''})"
        return text

    def coerce(self, variant: str, raw: Any) -> Any:
        """Parse and check one value; the error names the variant, parameter and range."""
        if self.default is None and (raw is None or (isinstance(raw, str) and raw.strip().lower() in _AUTO)):
            return None  # auto: resolved from the TokenContext when the variant runs
        try:
            if self.type is bool and isinstance(raw, str):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = raw.lower() in ("true", "1", "yes")
            elif self.type is int and isinstance(raw, str):
                value = int(raw)
            elif self.type is int and isinstance(raw, float) and raw.is_integer():
                value = int(raw)
            elif self.type in (tuple, list) and isinstance(raw, str):
                value = raw
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            raise VariantError(
                f"{variant}: parameter {self.name}={raw!r} is not valid; expected {self.allowed()}"
            ) from None
        if self.choices and value not in self.choices:
            raise VariantError(f"{variant}: {self.name}={value!r} must be {self.allowed()}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (
                value != value
                or (self.low is not None and (value <= self.low if self.low_open else value < self.low))
                or (self.high is not None and (value >= self.high if self.high_open else value > self.high))
            ):
                raise VariantError(f"{variant}: {self.name}={value} out of range; expected {self.allowed()}")
        return value


class Variant:
    """Base of every variant. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str]
    family: ClassVar[str]
    applies_to: ClassVar[frozenset[str]]  # subset of {"vit", "causal", "bidirectional"}
    params: ClassVar[tuple[Param, ...]] = ()
    cite: ClassVar[str] = ""
    honours_native: ClassVar[bool] = True  # False: refused on a model with its own score modifiers or sinks
    widens_mask: ClassVar[str] = ""  # a variant that widens the model's mask on purpose says how, for the screen

    def __init__(self, **values: Any):
        known = {p.name: p for p in self.params}
        for key in values:
            if key not in known:
                names = ", ".join(known) or "none"
                raise VariantError(f"{self.name}: unknown parameter {key!r}; parameters: {names}")
        self.values = {p.name: p.coerce(self.name, values.get(p.name, p.default)) for p in self.params}

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("values", {})
        if key in values:
            return values[key]
        raise AttributeError(key)

    def __repr__(self) -> str:
        return f"<variant {self.spec()}>"

    def spec(self) -> str:
        """The string that parses back into this variant (`name:param=value,...`)."""
        changed = [f"{k}={_fmt(v)}" for k, v in self.values.items()]
        return self.name + (":" + ",".join(changed) if changed else "")

    def check(self, ctx: TokenContext) -> None:
        """Refuse, in one line, a context this variant cannot run on."""
        self.check_kind(ctx.kind)

    def check_kind(self, kind: str) -> None:
        if kind not in self.applies_to:
            raise VariantError(
                f"variant {self.name} applies to {', '.join(sorted(self.applies_to))} models, "
                f"not to a {kind} model; pick another variant"
            )

    # hooks: None means "not used"
    def mask_mod(self, ctx: TokenContext):
        return None

    def score_mod(self, ctx: TokenContext):
        return None

    def kernel_form(self, ctx: TokenContext):
        """The variant as the Triton kernels run it (a kernels.kernel_form.KernelSpec), or None: the
        reference path runs it. Declared in the variant's own file, next to its rule."""
        return None

    def head_weight(self, ctx: TokenContext, heads: int):
        """(heads,) float weight of each head's output and maps, or None (every head as computed)."""
        return None

    def prefix_length(self, ctx: TokenContext) -> int:
        """With `widens_mask`: how many leading tokens see each other both ways."""
        return 0

    row_mask = None
    row_probs = None
    attend = None

    # parameters whose default is None ("auto")
    def auto_value(self, name: str, ctx: TokenContext) -> Any:
        """The value of an auto parameter for this context; variants with auto parameters override it."""
        raise VariantError(f"{self.name}: parameter {name} has no automatic value; set it explicitly")

    def resolved(self, ctx: TokenContext) -> dict[str, Any]:
        """Parameter values with every auto (None) replaced by its value for `ctx`."""
        return {k: self.auto_value(k, ctx) if v is None else v for k, v in self.values.items()}

    # FlexAttention form (static masks and pure score modifiers only)
    def flex_source(self, ctx_kind: str) -> FlexSource | None:
        """The variant as FlexAttention source for a model of `ctx_kind`; None: it has no such form."""
        return None

    def flex_snippet(self, ctx_kind: str | None = None, **sizes: Any) -> str:
        """Self-contained FlexAttention code (imports, mask_mod / score_mod with this variant's
        parameter values baked in, create_block_mask) to paste into training code.
        `sizes` (n, grid, n_prefix, n_heads) replace the placeholder sizes in the code."""
        if type(self).flex_source is Variant.flex_source:
            raise VariantError(f"{self.name} is not a static mask or score modifier; it has no FlexAttention form")
        return flex_snippet(self, ctx_kind, **sizes)

    @property
    def is_full(self) -> bool:
        return self.name == "full"

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "family": cls.family,
            "applies_to": sorted(cls.applies_to),
            "params": [
                {
                    "name": p.name,
                    "type": p.type.__name__,
                    "default": "auto" if p.default is None else p.default,
                    "allowed": p.allowed(),
                    "doc": p.doc,
                }
                for p in cls.params
            ],
            "doc": (cls.__doc__ or "").strip(),
            "widens_mask": cls.widens_mask,
        }


_AUTO = ("auto", "none", "")


def _fmt(v: Any) -> str:
    if v is None:
        return "auto"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
