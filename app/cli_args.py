"""Checks of command-line arguments that need no model: they run before any model loads.

A bad variant, parameter, index list, count, text or memory budget is one line in well under a
second, instead of after the seconds a model takes to load.
"""

from __future__ import annotations

import os
from pathlib import Path

from kernels.errors import UserError


class CliError(UserError):
    """A bad command-line argument."""


def positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CliError(f"{flag} must be at least 1, got {value}")


def indices(flag: str, raw: str | None) -> list[int] | None:
    """`--layers 0,1,5` → [0, 1, 5]; None when the flag is absent. An empty list ("," or " ") is refused:
    a variant applied nowhere would be a silent no-op."""
    if raw is None:
        return None
    try:
        values = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"{flag} {raw!r} must be comma-separated integers, e.g. 0,1,5") from None
    if not values:
        raise CliError(f"{flag} {raw!r} names nothing; give comma-separated integers, e.g. 0,1,5, "
                       f"or leave {flag} out for all")
    if min(values) < 0:
        raise CliError(f"{flag} {raw!r}: indices start at 0")
    return values


def variant(spec: str, model: str):
    """The parsed variant; for a preset, also whether it applies to the preset's kind of model."""
    from kernels.context import TokenContext
    from kernels.variants import parse_variant
    from kernels.variants.base import Variant
    from models.registry import PRESETS

    v = parse_variant(spec)
    preset = PRESETS.get((model or "").strip())
    if preset is not None:
        Variant.check(v, TokenContext(n=1, kind=preset.kind))  # the kind rule only; the rest needs the input
    return v


def output(path: str, force: bool) -> None:
    """An output that exists is refused before any work unless --force (after what a killed earlier run
    left beside it is cleaned up: models.atomic)."""
    from models.atomic import clean_stale

    clean_stale(Path(path).parent)
    if os.path.lexists(path) and not force:
        raise CliError(f"{path} already exists; pass --force to replace it")


def budget() -> None:
    """A bad ATTNSCOPE_MEMORY_BUDGET_GB, said before loading rather than after."""
    from models.memory import budget_bytes

    budget_bytes()


def trace_request(args) -> None:
    """What `trace` and `export` can refuse before loading the model."""
    budget()
    variant(args.variant, args.model)
    if getattr(args, "variant_b", None) is not None:
        variant(args.variant_b, args.model)
    indices("--layers", getattr(args, "layers", None))
    indices("--heads", getattr(args, "heads", None))
    positive("--max-tokens", getattr(args, "max_tokens", None))
