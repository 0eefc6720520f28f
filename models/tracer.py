"""Run a loaded model on one input under a variant and record a `Trace`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version

from kernels.variants import parse_variant
from models.calibrate import calibrate, default_calibration
from models.inject import CallPlan, plan
from models.inputs import check_text
from models.loaded import InputError, LoadedModel
from models.memory import GB, budget_bytes, reserve, trace_estimate
from models.recorder import DENSE_LIMIT, Recorder
from models.trace import Trace


def encode(lm: LoadedModel, *, text: str | None = None, image=None, max_tokens: int | None = None):
    """Encode one input; a text longer than `max_tokens` or the model's limit is cut or refused."""
    if (text is None) == (image is None):
        raise InputError("give exactly one input: a text or an image")
    if image is not None:
        return lm.encode_image(image)
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens (--max-tokens) must be at least 1, got {max_tokens}")
    enc = lm.encode_text(check_text(text))
    n, limit = len(enc.tokens), lm.max_tokens
    if max_tokens is not None:
        limit = max_tokens if limit is None else min(limit, max_tokens)
    elif limit is not None and n > limit:
        raise InputError(
            f"the text has {n} tokens but {lm.model_id} takes at most {limit}; shorten it, or truncate it and drop "
            f"the last {n - limit} tokens (--max-tokens {limit} on the command line, 'Truncate' in the app sidebar)"
        )
    return enc.truncated(limit) if limit is not None else enc


def trace(
    lm: LoadedModel,
    *,
    text: str | None = None,
    image=None,
    image_name: str | None = None,
    variant: str = "full",
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    qk: bool = False,
    dense_limit: int = DENSE_LIMIT,
    calibration: dict | None = None,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Trace:
    """One forward pass of `lm` with `variant` in `layers` and `heads` (default: all), recording attention.

    `calibration` ({"text": ...} or {"image": ...}) is the input variants like top_theta calibrate on;
    by default a shipped text or image. `max_tokens` keeps only the first tokens of a text.
    `progress(done, total)` is called after each recorded layer.
    """
    v = parse_variant(variant)
    _check_indices("layers", layers, lm.n_layers, lm.model_id)
    _check_indices("heads", heads, lm.n_heads, lm.model_id)
    enc = encode(lm, text=text, image=image, max_tokens=max_tokens)
    v.check(enc.ctx)
    dense_limit, note, need = _fit_memory(lm, enc.ctx.n, dense_limit, qk)
    ctx = enc.ctx
    if getattr(v, "needs_calibration", False):
        calib = default_calibration(lm) if calibration is None else encode(lm, **calibration)
        ctx = replace(ctx, calibration=calibrate(lm, v, calib))

    rec = Recorder(dense_limit=dense_limit, keep_qk=qk,
                   on_layer=None if progress is None else lambda done: progress(done, lm.n_layers))
    p = CallPlan(
        variant=v,
        ctx=ctx,
        recorder=rec,
        layers=frozenset(layers) if layers is not None else None,
        heads=tuple(heads) if heads is not None else None,
    )
    with reserve(need, "this trace"), plan(p):
        out = lm.forward(enc)
    arrays = dict(rec.arrays)
    arrays["logits"] = out.cpu().numpy()
    notes = list(enc.notes) + ([note] if note else [])
    if rec.empty_rows:
        notes.append(f"{rec.empty_rows} attention rows had every key masked; their output is zero")
    return Trace(
        model_id=lm.model_id,
        revision=lm.revision,
        kind=lm.kind,
        variant=v.spec(),
        tokens=enc.tokens,
        token_ids=enc.token_ids,
        special=enc.ctx.special.tolist(),
        n_layers=lm.n_layers,
        n_heads=lm.n_heads,
        input=_describe_input(text, image, image_name),
        arrays=arrays,
        grid=list(enc.ctx.grid) if enc.ctx.grid else None,
        output_kind=lm.output_kind,
        labels=lm.labels,
        variant_layers=sorted(layers) if layers is not None else None,
        variant_heads=sorted(heads) if heads is not None else None,
        dense_limit=dense_limit,
        notes=notes,
        versions=_versions(),
        image=enc.image,
        native=lm.native_pattern,
    )


def _fit_memory(lm: LoadedModel, n: int, dense_limit: int, qk: bool):
    """(dense limit, note, estimate): refuse a trace over the memory budget, or keep pooled maps instead of
    dense ones when that fits."""
    budget = budget_bytes()
    dense = n <= dense_limit
    need = trace_estimate(lm, n, dense=dense, qk=qk)
    if need.total <= budget:
        return dense_limit, None, need
    pooled = trace_estimate(lm, n, dense=False, qk=qk)
    if dense and pooled.total <= budget:
        return n - 1, (f"dense maps would need {need.total / GB:.1f} GB (budget {budget / GB:.1f} GB); "
                       "kept pooled maps instead"), pooled
    raise InputError(f"this trace needs about {need.describe()} but the memory budget is {budget / GB:.1f} GB; "
                     "use a shorter input, or raise ATTNSCOPE_MEMORY_BUDGET_GB")


def _check_indices(what: str, values: list[int] | None, count: int, model_id: str) -> None:
    bad = [i for i in values or () if not 0 <= i < count]
    if bad:
        raise InputError(f"{what} {bad} do not exist; {model_id} has {what} 0..{count - 1}")


def _describe_input(text, image, image_name) -> dict:
    if text is not None:
        return {
            "type": "text",
            "text": text,
            "sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        }
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode() + image.tobytes()).hexdigest()
    return {"type": "image", "name": image_name, "size": list(image.size), "mode": image.mode, "sha256": h}


def _versions() -> dict:
    out = {}
    for pkg in ("attnscope", "torch", "transformers", "timm", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
