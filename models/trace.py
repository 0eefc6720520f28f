"""`Trace`: what a traced forward pass recorded, and its folder format.

A trace folder holds `manifest.json` (what was run, on what, with which versions) and
`trace.npz` (the arrays: L{l}_probs, L{l}_pooled, L{l}_lse, L{l}_q, L{l}_k, logits, ...).
The manifest carries a hash of the arrays and one of itself; on load both are checked, and the
manifest's schema and shapes against the arrays (models/trace_check.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from kernels.errors import UserError
from models.atomic import clean_stale, write_folder

FORMAT_VERSION = 2  # 2: manifest_sha256 covers the manifest
FILES = ("manifest.json", "trace.npz")


class TraceError(UserError, ValueError):
    """A trace folder that cannot be read; the message says what is wrong."""


@dataclass
class Trace:
    model_id: str
    kind: str  # vit | causal | bidirectional
    variant: str  # the variant spec string, e.g. "sliding_window:w=32,sinks=4"
    tokens: list[str]
    token_ids: list[int]
    special: list[bool]
    n_layers: int
    n_heads: int
    input: dict  # {"type": "text"|"image", "text"|"name": ..., "sha256": ...}
    arrays: dict[str, np.ndarray] = field(repr=False)
    grid: list[int] | None = None
    revision: str | None = None
    output_kind: str = "logits"
    labels: list[str] | None = None
    variant_layers: list[int] | None = None  # None: the variant ran in every layer
    variant_heads: list[int] | None = None  # None: ... and in every head
    dense_limit: int = 1024
    notes: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)  # what a ViT saw, HxWx3 uint8
    native: list[str] | None = None  # per layer, the model's own attention pattern (models.pattern phrases)

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def dense(self) -> bool:
        """Whether the N×N probabilities were kept (N ≤ the dense limit)."""
        return array_key(0, "probs") in self.arrays

    def has_qk(self) -> bool:
        return array_key(0, "q") in self.arrays

    def _get(self, layer: int, name: str, missing: str) -> np.ndarray:
        if not 0 <= layer < self.n_layers:
            raise TraceError(f"layer {layer} does not exist; this trace has layers 0..{self.n_layers - 1}")
        value = self.arrays.get(array_key(layer, name))
        if value is None:
            raise TraceError(f"this trace has no {name} for layer {layer}: {missing}")
        return value

    def attention(self, layer: int) -> np.ndarray:
        """(H, N, N) attention probabilities of one layer (dense traces only)."""
        return self._get(layer, "probs", f"N={self.n} is over its dense limit {self.dense_limit}; use pooled(layer) "
                                         "or an exact tile (analysis.tiles), or trace again with a higher dense limit")

    def pooled(self, layer: int) -> np.ndarray:
        """(H, R, R) mean probability of each tile (long traces only)."""
        return self._get(layer, "pooled", "it is dense; use attention(layer)")

    def attention_map(self, layer: int) -> np.ndarray:
        """What a picture of the layer shows: the dense (H, N, N) probabilities, else the pooled (H, R, R) map."""
        return self.attention(layer) if self.dense else self.pooled(layer)

    def q(self, layer: int) -> np.ndarray:
        """(H, N, D) queries after rotary embedding (traces made with qk=True / --qk)."""
        return self._get(layer, "q", "trace again with qk=True (--qk on the command line)")

    def k(self, layer: int) -> np.ndarray:
        """(H, N, D) keys after rotary embedding, key heads expanded to every query head."""
        return self._get(layer, "k", "trace again with qk=True (--qk on the command line)")

    def lse(self, layer: int) -> np.ndarray:
        """(H, N) log-sum-exp of each row's scores (−inf for a row with every key masked)."""
        return self._get(layer, "lse", "the variant computes no softmax, so rows have no log-sum-exp")

    def stat(self, layer: int, name: str) -> np.ndarray:
        """(H, N) one row statistic: entropy, distance, sink or maxp (see kernels.maps.STATS)."""
        return self._get(layer, name, "it was not recorded")

    def has(self, layer: int, name: str) -> bool:
        return array_key(layer, name) in self.arrays

    def scale(self, layer: int) -> float:
        """The model's own q·k scale in this layer (1/√D unless the model says otherwise)."""
        if self.has(layer, "scale"):
            return float(self.arrays[array_key(layer, "scale")])
        return float(self.q(layer).shape[-1] ** -0.5)

    @property
    def logits(self) -> np.ndarray:
        return self.arrays["logits"]

    # -- file format -------------------------------------------------------------
    def manifest(self) -> dict:
        # not dataclasses.asdict: it deep-copies every array
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("arrays", "image")}
        meta["format_version"] = FORMAT_VERSION
        meta["shapes"] = {k: list(v.shape) for k, v in sorted(self.arrays.items())}
        meta["arrays_sha256"] = arrays_hash(self._all_arrays())
        meta["manifest_sha256"] = manifest_hash(meta)
        return meta

    def _all_arrays(self) -> dict[str, np.ndarray]:
        arrays = dict(self.arrays)
        if self.image is not None:
            arrays["image"] = self.image
        return arrays

    def save(self, folder: str | os.PathLike, *, force: bool = False) -> Path:
        """Write manifest.json and trace.npz as a new folder (built beside it, then renamed into place).

        An existing folder is refused unless `force` (then only a trace folder or an empty one is replaced).
        """
        def fill(tmp: Path) -> None:
            np.savez_compressed(tmp / "trace.npz", **self._all_arrays())  # streams each array to the file
            (tmp / "manifest.json").write_text(json.dumps(self.manifest(), indent=1))

        return write_folder(folder, fill, force=force, error=TraceError, what="trace",
                            replaceable=lambda p: any((p / name).exists() for name in FILES))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Trace:
        """A saved trace, after checking its manifest (schema, hash) and its arrays (hash, shapes) agree."""
        from models.trace_check import check_arrays, check_manifest, read_arrays, read_manifest

        folder = Path(folder)
        if folder.name == "manifest.json":
            folder = folder.parent
        clean_stale(folder.parent)  # a save killed while replacing this folder left the old one aside: back
        for name in FILES:
            if not (folder / name).is_file():
                raise TraceError(f"{folder} is not a trace folder: {name} is missing")
        meta = check_manifest(read_manifest(folder / "manifest.json"), cls, folder)
        arrays = read_arrays(folder / "trace.npz")
        check_arrays(meta, arrays, folder)
        image = arrays.pop("image", None)
        fields = {k: meta[k] for k in cls.__dataclass_fields__ if k in meta and k not in ("arrays", "image")}
        return cls(arrays=arrays, image=image, **fields)


def array_key(layer: int, name: str) -> str:
    """The name of one layer's array in trace.npz, e.g. L3_probs: the only place the naming is written."""
    return f"L{layer}_{name}"


_ARRAY_KEY = re.compile(r"^L(\d+)_(\w+)$")


def split_array_key(key: str) -> tuple[int, str] | None:
    """(layer, name) of a per-layer array's key (the inverse of array_key); None for logits, image..."""
    m = _ARRAY_KEY.match(key)
    return (int(m[1]), m[2]) if m else None


def arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")  # the array's own bytes, not a copy
    return h.hexdigest()


def manifest_hash(meta: dict) -> str:
    """A hash of every other field of the manifest (arrays_sha256 included), so an edit to any is seen."""
    rest = {k: v for k, v in meta.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
