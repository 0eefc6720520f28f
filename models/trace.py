"""`Trace`: what a traced forward pass recorded, and its folder format.

A trace folder holds `manifest.json` (what was run, on what, with which versions) and
`trace.npz` (the arrays: L{l}_probs, L{l}_pooled, L{l}_lse, L{l}_q, L{l}_k, logits, ...).
The manifest carries a hash of the arrays, checked on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kernels.errors import UserError

FORMAT_VERSION = 1


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
        meta = {k: v for k, v in asdict(self).items() if k not in ("arrays", "image")}
        meta["format_version"] = FORMAT_VERSION
        meta["shapes"] = {k: list(v.shape) for k, v in sorted(self.arrays.items())}
        meta["arrays_sha256"] = arrays_hash(self._all_arrays())
        return meta

    def _all_arrays(self) -> dict[str, np.ndarray]:
        arrays = dict(self.arrays)
        if self.image is not None:
            arrays["image"] = self.image
        return arrays

    def save(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json and trace.npz atomically (temporary files, then rename)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **self._all_arrays())
        _atomic_write(folder / "trace.npz", buf.getvalue())
        _atomic_write(folder / "manifest.json", json.dumps(self.manifest(), indent=1).encode())
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Trace:
        folder = Path(folder)
        if folder.name == "manifest.json":
            folder = folder.parent
        man_path, npz_path = folder / "manifest.json", folder / "trace.npz"
        for p in (man_path, npz_path):
            if not p.is_file():
                raise TraceError(f"{folder} is not a trace folder: {p.name} is missing")
        try:
            meta = json.loads(man_path.read_text())
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise TraceError(f"cannot read the trace in {folder}: {exc}") from None
        if meta.get("arrays_sha256") != arrays_hash(arrays):
            raise TraceError(
                f"the arrays in {npz_path} do not match the hash in its manifest; the trace was edited or damaged"
            )
        image = arrays.pop("image", None)
        fields = {k: meta[k] for k in cls.__dataclass_fields__ if k in meta and k not in ("arrays", "image")}
        return cls(arrays=arrays, image=image, **fields)


def array_key(layer: int, name: str) -> str:
    """The name of one layer's array in trace.npz, e.g. L3_probs: the only place the naming is written."""
    return f"L{layer}_{name}"


def arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
