"""Variant objects: named, typed, validated parameters plus the maths hooks.

A variant changes attention through at most these hooks (all optional):
  mask_mod(ctx)   -> f(b, h, q_idx, kv_idx) -> bool   keep (True) or mask a score; static
  score_mod(ctx)  -> f(score, b, h, q_idx, kv_idx)    add a bias to a score
  row_mask(s, allowed, q_idx, ctx) -> allowed          content-dependent pruning (top-k, ...)
  row_probs(s, allowed, q_idx, ctx) -> probs           a different normaliser (entmax, relaxed, ...)
  attend(q, k, v, *, scale, ctx, allowed, want_probs, sinks, chunk) -> AttnOut
                                                       replaces the whole computation
Index functions follow FlexAttention's convention so the same function drives the
reference path, FlexAttention and the mask views. They must only use broadcasting torch ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kernels.context import TokenContext


class VariantError(ValueError):
    """A variant name, parameter or target model that cannot be used; the message says why."""


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.type is bool:
            return "true or false"
        lo = "-inf" if self.low is None else self.low
        hi = "inf" if self.high is None else self.high
        return f"a {self.type.__name__} in [{lo}, {hi}]"

    def coerce(self, variant: str, raw: Any) -> Any:
        """Parse and check one value; the error names the variant, parameter and range."""
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
            if value != value or (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
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
        if ctx.kind not in self.applies_to:
            raise VariantError(
                f"variant {self.name} applies to {', '.join(sorted(self.applies_to))} models, "
                f"not to a {ctx.kind} model; pick another variant"
            )

    # hooks: None means "not used"
    def mask_mod(self, ctx: TokenContext):
        return None

    def score_mod(self, ctx: TokenContext):
        return None

    row_mask = None
    row_probs = None
    attend = None

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
                {"name": p.name, "type": p.type.__name__, "default": p.default, "allowed": p.allowed(), "doc": p.doc}
                for p in cls.params
            ],
            "doc": (cls.__doc__ or "").strip(),
        }


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
