"""Reading a saved trace as untrusted input: its manifest's schema and hash, its arrays' hash and shapes.

Every problem is one `TraceError` line naming the file and what is wrong, so a damaged, edited or
hostile folder is refused before a view reads it.
"""

from __future__ import annotations

import json
import types
import typing
import zipfile
from dataclasses import MISSING
from pathlib import Path

import numpy as np

from kernels.errors import UserError
from models.trace import FORMAT_VERSION, TraceError, array_key, arrays_hash, manifest_hash, split_array_key

META_KEYS = ("format_version", "shapes", "arrays_sha256", "manifest_sha256")  # written beside the fields
PER_LAYER_FIELDS = ("native",)  # list fields holding one entry per layer
ROW_STATS_SHAPE = "(H, N)"  # every per-layer array not named below: lse and the row statistics


def read_manifest(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, not UTF-8
        raise TraceError(f"cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{path} is not a trace manifest (a JSON object)")
    return meta


def check_manifest(meta: dict, cls, folder: Path) -> dict:
    """The manifest's version, hash and schema (types of the Trace fields, lengths that must agree)."""
    where = folder / "manifest.json"
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise TraceError(f"{where} has format_version {version!r}; this attnscope reads version {FORMAT_VERSION} "
                         "(trace the input again)")
    if meta.get("manifest_sha256") != manifest_hash(meta):
        raise TraceError(f"{where} does not match its manifest_sha256; the trace was edited or damaged")
    hints = typing.get_type_hints(cls)
    for name, f in cls.__dataclass_fields__.items():
        if name in ("arrays", "image"):
            continue
        if name not in meta:
            if f.default is MISSING and f.default_factory is MISSING:
                raise TraceError(f"{where} has no {name!r}")
            continue
        if not _has_type(meta[name], hints[name]):
            raise TraceError(f"{where}: {name!r} is not {_type_name(hints[name])}")
    if not isinstance(meta.get("shapes"), dict) or not isinstance(meta.get("arrays_sha256"), str):
        raise TraceError(f"{where} has no shapes and arrays_sha256")
    _check_lengths(meta, where)
    return meta


def _check_lengths(meta: dict, where: Path) -> None:
    from kernels.context import KINDS
    from kernels.variants import VariantError, parse_variant

    n, n_layers, n_heads = len(meta["tokens"]), meta["n_layers"], meta["n_heads"]

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise TraceError(f"{where}: {what}")

    need(n >= 1 and n_layers >= 1 and n_heads >= 1, "tokens, n_layers and n_heads must not be empty or zero")
    need(len(meta["token_ids"]) == n and len(meta["special"]) == n,
         f"tokens, token_ids and special must have one entry per token ({n})")
    need(meta["kind"] in KINDS, f"kind must be one of {', '.join(KINDS)}")
    need(meta["input"].get("type") in ("text", "image"), "input.type must be text or image")
    for name, count in (("variant_layers", n_layers), ("variant_heads", n_heads)):
        need(all(0 <= i < count for i in meta.get(name) or ()), f"{name} must lie in 0..{count - 1}")
    for name in PER_LAYER_FIELDS:
        value = meta.get(name)
        need(value is None or (isinstance(value, list) and len(value) == n_layers),
             f"{name} must have one entry per layer ({n_layers})")
    grid = meta.get("grid")
    if grid is not None:
        need(len(grid) == 2 and min(grid) >= 1 and grid[0] * grid[1] + sum(meta["special"]) == n,
             "grid [rows, cols] must cover every token that is not special")
    need(meta["kind"] != "vit" or grid is not None, "a vit trace needs its grid")
    try:
        parse_variant(meta["variant"])
    except VariantError as exc:
        raise TraceError(f"{where}: variant: {exc}") from None


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of trace.npz; the sizes its headers declare are checked against the memory budget first."""
    from models.memory import require

    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(_declared_bytes(z, info) for info in z.infolist())
        require(declared, f"loading {path}")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except UserError:  # over the memory budget
        raise
    except Exception as exc:  # numpy, zipfile and zlib raise many kinds on a damaged file
        raise TraceError(f"cannot read {path}: {type(exc).__name__}: {_first_line(exc)}") from None


def _declared_bytes(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """What one member array will take once read, from its .npy header (its data is not read)."""
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return int(np.prod(shape, dtype=np.float64) * dtype.itemsize)


def check_arrays(meta: dict, arrays: dict[str, np.ndarray], folder: Path) -> None:
    """The arrays' hash, then their shapes against the manifest's shapes and its token, layer and head counts."""
    where = folder / "trace.npz"
    if meta["arrays_sha256"] != arrays_hash(arrays):
        raise TraceError(f"the arrays in {where} do not match the hash in its manifest; the trace was edited or "
                         "damaged")
    shapes = {k: list(v.shape) for k, v in arrays.items() if k != "image"}
    if meta["shapes"] != shapes:
        raise TraceError(f"the shapes in {folder / 'manifest.json'} do not match the arrays in {where}")
    n, n_layers, n_heads = len(meta["tokens"]), meta["n_layers"], meta["n_heads"]
    qk_dims = set()

    def need(ok: bool, name: str, expected: str) -> None:
        if not ok:
            raise TraceError(f"{where}: {name} has shape {tuple(arrays[name].shape)}, expected {expected} "
                             f"(N={n} tokens, H={n_heads} heads)")

    for name, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise TraceError(f"{where}: {name} holds {a.dtype} values, not numbers")
        key = split_array_key(name)
        if key is None:
            continue
        layer, what = key
        if layer >= n_layers:
            raise TraceError(f"{where}: {name} is for layer {layer}; the manifest says {n_layers} layers")
        need(a.dtype.kind == "f", name, "floating-point values")
        if what == "probs":
            need(a.shape == (n_heads, n, n), name, "(H, N, N)")
        elif what == "pooled":
            need(a.ndim == 3 and a.shape[0] == n_heads and a.shape[1] == a.shape[2] and 1 <= a.shape[1] <= n,
                 name, "(H, R, R) with R ≤ N")
        elif what in ("q", "k"):
            need(a.ndim == 3 and a.shape[:2] == (n_heads, n) and a.shape[2] >= 1, name, "(H, N, D)")
            qk_dims.add(a.shape[2])
        elif what == "scale":
            need(a.ndim == 0, name, "a scalar")
        else:
            need(a.shape == (n_heads, n), name, ROW_STATS_SHAPE)
    missing = [layer for layer in range(n_layers)
               if array_key(layer, "probs") not in arrays and array_key(layer, "pooled") not in arrays]
    if missing:
        raise TraceError(f"{where} has no attention map (probs or pooled) for layers {missing[:5]}; the manifest "
                         f"says {n_layers} layers")
    if len(qk_dims) > 1:
        raise TraceError(f"{where}: q and k arrays differ in head dimension ({sorted(qk_dims)})")
    logits = arrays.get("logits")
    if logits is None or logits.ndim == 0 or logits.dtype.kind != "f":
        raise TraceError(f"{where} has no logits array (the model's output)")
    labels = meta.get("labels")
    if labels is not None and len(labels) != logits.shape[-1]:
        raise TraceError(f"{folder / 'manifest.json'}: {len(labels)} labels for {logits.shape[-1]} outputs")
    image = arrays.get("image")
    if image is not None and not (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise TraceError(f"{where}: image must be (height, width, 3) uint8 pixels")


def _has_type(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_has_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    if tp in (str, bool):
        return isinstance(value, tp)
    return False  # a field type the manifest cannot hold


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
