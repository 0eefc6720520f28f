"""Which GPU path runs a variant family on a card: the Triton kernels or compiled FlexAttention.

The choice is data, measured: `kernels/gpu_dispatch.json`, written by `python -m bench.gpu_table` from
the `gpu_<card>_triton.json` files `bench/bench_triton.py` leaves in bench/results/ (it names them).
Families are `Variant.family` (baseline, static_mask, content, score_mod).

Where the table has no measurement for the card or the family (today: no GPU run has happened yet),
the answer is FALLBACK, the Triton kernels, each family guarded by the runtime self-check
(kernels/selfcheck.py): Triton is the one GPU path that covers every family with a kernel form
(content variants have no FlexAttention form) and gives the LSE and the maps pass in one design.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("gpu_dispatch.json")
BACKENDS = ("triton", "flex")
FALLBACK = "triton"


def card_slug(name: str) -> str:
    """A card's name as used in file names and the table: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


@cache
def _cards() -> dict:
    try:
        return json.loads(TABLE.read_text()).get("cards", {})
    except (OSError, ValueError):  # an unreadable table measures nothing: the fallback holds
        return {}


def backend(family: str, card: str) -> str:
    """"triton" or "flex" for `family` on the card named `card` (a slug or a device name)."""
    entry = _cards().get(card_slug(card), {}).get("families", {}).get(family, {})
    choice = entry.get("backend", FALLBACK)
    return choice if choice in BACKENDS else FALLBACK
