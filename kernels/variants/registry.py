"""Name → variant class, and the `name:param=value,...` string form."""

from __future__ import annotations

from kernels.variants.base import Variant, VariantError

REGISTRY: dict[str, type[Variant]] = {}


def register(cls: type[Variant]) -> type[Variant]:
    REGISTRY[cls.name] = cls
    return cls


def parse_variant(spec: str | Variant) -> Variant:
    """`"sliding_window:w=32,sinks=4"` → a validated variant instance."""
    if isinstance(spec, Variant):
        return spec
    spec = (spec or "").strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in REGISTRY:
        raise VariantError(
            f"unknown variant {name!r}; run `attnscope variants` to list them ({', '.join(sorted(REGISTRY))})"
        )
    values = {}
    for item in filter(None, (s.strip() for s in _split_params(rest))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise VariantError(f"{name}: parameter {item!r} must be written as name=value")
        values[key.strip()] = value.strip()
    return REGISTRY[name](**values)


def parse_inner(owner: str, raw: str) -> tuple[Variant, str]:
    """The variant a wrapping variant's `inner` parameter names, and that parameter as it parses back:
    in [brackets] when it has parameters (`inner=[sliding_window:w=64,sinks=4]`), a bare name without."""
    text = raw.strip()
    text = text[1:-1].strip() if text.startswith("[") and text.endswith("]") else text
    if text.partition(":")[0].strip() == owner:
        raise VariantError(f"{owner}: parameter inner cannot be {owner} itself")
    try:
        inner = parse_variant(text)
    except VariantError as exc:
        raise VariantError(f"{owner}: parameter inner={text!r} is not usable: {exc}") from None
    return inner, f"[{text}]" if ":" in text else text


def _split_params(rest: str) -> list[str]:
    """Split on commas outside brackets so list values like heads=[(0,1),(2,3)] survive."""
    out, depth, cur = [], 0, ""
    for ch in rest:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return out


def all_variants() -> list[type[Variant]]:
    return list(REGISTRY.values())
