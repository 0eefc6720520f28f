"""The variant catalogue of shared/VARIANTS.md. Importing this package registers every variant."""

from kernels.variants import baseline  # noqa: F401  (registers)
from kernels.variants.base import Param, Variant, VariantError
from kernels.variants.registry import REGISTRY, all_variants, parse_variant, register

# registered in catalogue order; (e) is attention-gym's masks and biases, one file each
for _family in ("static_masks", "content", "score_mods", "approx", "prefix_lm", "document", "alibi", "softcap"):
    try:
        __import__(f"kernels.variants.{_family}")
    except ModuleNotFoundError as _exc:  # a family not written yet
        if _exc.name != f"kernels.variants.{_family}":
            raise

__all__ = ["Param", "Variant", "VariantError", "REGISTRY", "all_variants", "parse_variant", "register"]
