"""What a request will add to memory, estimated before it runs, and the budget it must fit in.

Every path that runs a model asks here first — trace (and so compare and export), the query–key
explorer, head types, sweeps — and `require` / `reserve` refuse in one line a request over the budget.
An estimate is a sum of named parts (`Estimate.parts`), each a count of float32 numbers times a
constant below. The constants are measured: `attnscope bench memory` (bench/bench_memory.py) traces
the presets at several lengths with and without q and k, compares the peak RSS growth with these
estimates and writes bench/results/memory_cpu.json; rerun it after changing what a trace holds.

The estimate covers what a request adds on top of the loaded model: the maps and the recorder's
other arrays (LSE, row statistics, q and k), the attention's working set, the model's own
activations, and what the save needs beyond them. The model's weights are taken when it loads
(`models.registry.resident`).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

GB = 1024**3
F32 = 4
POOLED = 256  # side of the pooled maps kept above the dense limit (models.recorder.POOLED)
ROW_ARRAYS = 5  # (H, N) arrays per layer: the LSE and the four row statistics

# Fitted to bench/bench_memory.py (bench/results/memory_cpu.json): the tensors alive at once, plus the slack
# glibc's heap keeps between them, so that the estimate stays just above the measured peak.
ATTN_CHUNK_TEMPS = 6  # (H, chunk, N) float32 tensors of one query chunk: scores, probabilities, masks
QKV_TEMPS = 8  # (H, N, head_dim) tensors of one layer: projections, rotary, expanded k and v, output
HIDDEN_TEMPS = 10  # (N, hidden) tensors: residual stream, norms, attention output
MLP_TEMPS = 6  # (N, intermediate) tensors of the MLP: gate, up, activation, product
SAVE_BYTES = 16 * 2**20  # what writing trace.npz holds beyond the arrays: zip and zlib buffers, one chunk
FIRST_USE_BYTES = 16 * 2**20  # code and caches the first traced forward pass of a process brings in

BUDGET_ENV = "ATTNSCOPE_MEMORY_BUDGET_GB"


@dataclass(frozen=True)
class Estimate:
    """Bytes a request will add, by part (recorder, attention, model, save, ...)."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate({k: self.parts.get(k, 0) + other.parts.get(k, 0) for k in {**self.parts, **other.parts}})

    def describe(self) -> str:
        """"1.9 GB (recorder 1.12, attention 0.51, model 0.22)": the total and its parts over 5 % of it."""
        parts = sorted(((k, v) for k, v in self.parts.items() if v > 0.05 * self.total), key=lambda kv: -kv[1])
        return f"{self.total / GB:.1f} GB (" + ", ".join(f"{k} {v / GB:.2f}" for k, v in parts) + ")"


# -- the budget -------------------------------------------------------------------------------------------
def budget_bytes() -> int:
    """ATTNSCOPE_MEMORY_BUDGET_GB, else half of the memory available now. A value that is not a positive
    number of GB is refused in one line."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        import psutil

        return psutil.virtual_memory().available // 2
    try:
        gb = float(raw)
    except ValueError:
        gb = math.nan
    if not (math.isfinite(gb) and gb > 0):
        raise _error(f"{BUDGET_ENV}={raw!r} is not a size; set it to a positive number of GB (e.g. 4), "
                     "or unset it for half the available memory")
    return int(gb * GB)


_held = 0  # bytes reserved by requests running now in this process (the app's sessions share it)
_lock = threading.Lock()


def require(need: Estimate | int, what: str) -> None:
    """Refuse, in one line and before any work, a request whose estimate is over what the budget leaves."""
    need_bytes = need.total if isinstance(need, Estimate) else int(need)
    budget = budget_bytes()
    held = _held
    if need_bytes > budget - held:
        size = need.describe() if isinstance(need, Estimate) else f"{need_bytes / GB:.1f} GB"
        busy = f", {held / GB:.1f} GB of it held by requests running now" if held else ""
        raise _error(f"{what} needs about {size} but the memory budget is {budget / GB:.1f} GB{busy}; use a "
                     f"shorter input or fewer inputs, or raise {BUDGET_ENV}")


@contextlib.contextmanager
def reserve(need: Estimate | int, what: str) -> Iterator[None]:
    """`require`, then hold the estimate against the budget while the block runs, so concurrent requests
    (sessions of one app) cannot together exceed it."""
    global _held
    need_bytes = need.total if isinstance(need, Estimate) else int(need)
    with _lock:
        require(need, what)
        _held += need_bytes
    try:
        yield
    finally:
        with _lock:
            _held -= need_bytes


def _error(msg: str):
    from models.loaded import InputError

    return InputError(msg)


# -- estimates --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dims:
    """What the estimates need to know of a model."""

    n_layers: int
    n_heads: int
    head_dim: int
    hidden: int
    intermediate: int


def dims(lm) -> Dims:
    """The sizes of `lm` from its config (transformers) or its modules (timm)."""
    config = getattr(lm.module, "config", None)
    config = getattr(config, "text_config", None) or config
    hidden = getattr(config, "hidden_size", None) or getattr(lm.module, "embed_dim", None) or 1024
    head_dim = getattr(config, "head_dim", None) or hidden // max(lm.n_heads, 1)
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    return Dims(lm.n_layers, lm.n_heads, int(head_dim), int(hidden), int(intermediate))


def kept_parts(d: Dims, n: int, *, dense: bool, qk: bool, layers: int | None = None,
               pooled: int = POOLED) -> dict[str, int]:
    """What a trace keeps for `layers` layers (default: all): "maps" (dense probabilities or pooled maps,
    with the float64 sums a pooled map is built from while its layer runs) and "recorder" (LSE, row
    statistics, q and k)."""
    H, count = d.n_heads, d.n_layers if layers is None else layers
    maps = count * H * n * n * F32 if dense else count * H * min(pooled, n) ** 2 * F32 + H * pooled**2 * 8
    recorder = count * (ROW_ARRAYS * H * n + (2 * H * n * d.head_dim if qk else 0)) * F32
    return {"maps": maps, "recorder": recorder}


def forward_estimate(lm, n: int) -> Estimate:
    """The working set of one forward pass at n tokens: the model's activations and one layer's attention."""
    from kernels.reference import CHUNK  # query rows an attention call holds at once (torch is loaded by now)

    d = dims(lm)
    attention = (ATTN_CHUNK_TEMPS * d.n_heads * min(CHUNK, n) * n + QKV_TEMPS * d.n_heads * n * d.head_dim) * F32
    model = n * (HIDDEN_TEMPS * d.hidden + MLP_TEMPS * d.intermediate) * F32
    return Estimate({"attention": attention, "model": model, "first use": FIRST_USE_BYTES})


def trace_estimate(lm, n: int, *, dense: bool, qk: bool, save: bool = True, traces: int = 1) -> Estimate:
    """A trace of n tokens (`traces` of them held at once, as a comparison does), and its save."""
    kept = {k: traces * v for k, v in kept_parts(dims(lm), n, dense=dense, qk=qk).items()}
    forward = forward_estimate(lm, n)
    # the save runs once the forward pass has freed its working set: only what it needs beyond that adds
    return Estimate({**kept, "save": max(0, SAVE_BYTES - forward.total) if save else 0}) + forward


def one_layer_estimate(lm, lengths: list[int]) -> Estimate:
    """Inputs of these token counts each keeping one layer's q, k and maps (the query–key explorer), and the
    working set of the longest one's forward pass."""
    from models.recorder import DENSE_LIMIT

    d, kept = dims(lm), Estimate({})
    for n in lengths:
        kept = kept + Estimate(kept_parts(d, n, dense=n <= DENSE_LIMIT, qk=True, layers=1))
    return kept + forward_estimate(lm, max(lengths))


def estimate_bytes(lm, n: int, *, dense: bool, qk: bool, pooled: int = POOLED) -> int:
    """Total bytes of `trace_estimate` (kept for callers that want one number)."""
    return trace_estimate(lm, n, dense=dense, qk=qk).total


# -- the allocator ---------------------------------------------------------------------------------------
_libc = None


def release_freed_memory() -> None:
    """Give the memory freed inside glibc's heap back to the system (malloc_trim), as models.inject does after
    each recorded layer.

    A traced forward pass frees large working tensors between the arrays it keeps; glibc keeps such holes
    (and, once its mmap threshold has risen, serves blocks of up to 32 MB from the heap), so without this
    a trace's RSS grew by 2-3× what it held, depending on the process's allocation history (measured with
    bench/bench_memory.py). Fixing the mmap threshold instead cost 40 % more CPU in page faults; trimming
    once per layer costs a few percent. No-op where glibc is not the allocator.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
