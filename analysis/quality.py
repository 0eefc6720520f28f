"""Quality lens: what a variant does to a real model, measured against the model's own attention.

`sweep(lm, specs)` runs the model once under `full` and once under every variant point on the
same inputs and reports, per point:

- `sparsity` — the fraction of scores kept: Σ kept / Σ allowed over every layer, head, input
  and query row, where *allowed* = the model's own mask allows the score (causal, padding) and
  *kept* = allowed and not removed by the variant (a -inf score handed to the recorder's sinks;
  the variant's own rules apply, e.g. special tokens such as [CLS]/[SEP] stay global);
  for variants with another normaliser (entmax) a score whose probability is exactly 0 also
  counts as removed. Approximations (linear, ...) and score modifiers keep every score (1.0);
  `head_ablation` zeroes outputs, not scores, so it keeps every score too.
- `attn_kl` — KL(full ‖ variant) of attention rows, per layer and head the mean over query rows
  (at most `kl_rows` rows per input, evenly spaced, when N is larger), then the mean over heads.
  Both runs are end to end: layer l of the variant run sees the residual stream the variant
  produced in layers < l, exactly what analysis.compare reports for two traces of one input.
  eps-safe as there: Σ_{p>0} p (log(p + ε) − log(q + ε)), ε = 1e-12 (logs in float32, sums in
  float64). A sparse
  variant gives 0 where full attention has mass, so its KL is dominated by log(1/ε) × that mass;
  `attn_mass_lost` reports the mass itself: the full-attention probability on keys the variant
  gives exactly 0, mean over rows, layers and heads.
- `output_kl`, `top1_agreement` — KL(full ‖ variant) of the output distribution and the
  fraction of equal argmaxes: every position (causal LM), the masked positions (MLM), the
  class scores (ViT classifier). None for models whose output is a hidden state.
- the task metric (`metric`, `value`):
  - `perplexity` for causal LMs: exp(mean next-token NLL) over every position of the inputs,
    computed from our own forward (the base model, then the LM head in chunks of positions);
  - `masked_accuracy` for encoders with an MLM head: 15 % of the non-special tokens (a seeded
    choice) replaced by the mask token in one pass, accuracy of the argmax at those positions;
  - `embedding_cosine` for encoders without an MLM head, e.g. `minilm` (all-MiniLM-L6-v2 ships
    as a sentence encoder with no MLM head, so masked-token accuracy cannot be measured):
    cosine similarity of the mean-pooled sentence embedding (the pooling the model was trained
    with) under full vs the variant, mean over inputs;
  - `accuracy` for `digits-vit` on the held-out digits split (images batched through the model;
    the token context is the same for every image).

Variant points: specs, each either a plain spec (`sliding_window:w=64,sinks=4`) or a grid with
alternatives separated by `|` (`sliding_window:w=32|64|128,sinks=0|4` → 6 points, the product
of the alternatives in parameter order; brackets protect nested specs: `inner=[topk:k=8|16]` is
one value).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analysis.compare import EPS
from kernels.variants import Variant, VariantError, parse_variant
from models.calibrate import calibrate, default_calibration
from models.inject import FULL, CallPlan, plan
from models.loaded import Encoded, InputError, LoadedModel

DATA = Path(__file__).resolve().parent / "data"
PERPLEXITY_TEXT = DATA / "perplexity.txt"
KL_EPS = EPS  # the same eps as analysis.compare, so sweep and compare agree on one input
KL_ROWS = 128  # query rows per input used for the attention KL (all rows when N is smaller)
MASK_FRACTION = 0.15
VOCAB_CHUNK = 256  # positions per LM-head projection


# ---------------------------------------------------------------------------------------------
# variant grids
# ---------------------------------------------------------------------------------------------


def expand_specs(specs: list[str] | str) -> list[str]:
    """Expand grid specs (`name:a=1|2,b=x|y`) into plain specs, in order, duplicates dropped."""
    out: list[str] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        name, colon, rest = spec.strip().partition(":")
        if not colon:
            out.append(name)
            continue
        choices = []
        for item in filter(None, (s.strip() for s in _split_top(rest, ","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise VariantError(f"{name}: parameter {item!r} must be written as name=value (a|b for a grid)")
            values = [v.strip() for v in _split_top(value, "|")]
            if any(not v for v in values):
                raise VariantError(f"{name}: parameter {key.strip()} has an empty alternative in {value!r}")
            choices.append([f"{key.strip()}={v}" for v in values])
        for combo in itertools.product(*choices):
            out.append(name + (":" + ",".join(combo) if combo else ""))
    return list(dict.fromkeys(out))


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets, so nested specs like inner=[topk:k=8,x=1] stay whole."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


# ---------------------------------------------------------------------------------------------
# attention damage: a recorder for CallPlan
# ---------------------------------------------------------------------------------------------


class AttnStats:
    """Recorder counting kept scores per layer and head; with `reference` it also sums the KL of
    sampled attention rows against the reference run. Without one it *is* a reference: it keeps the
    sampled rows of its own run, each only up to its chunk's last key (causal rows: half of N on
    average), with Σ p·log(p + ε) of each row. Works on any batch size."""

    def __init__(self, rows: torch.Tensor, reference: AttnStats | None = None, sparse_probs: bool = False):
        self.rows = rows  # sorted query indices used for the KL
        self.reference = reference
        self.sparse_probs = sparse_probs  # a zero probability also counts as removed
        self.kept: dict[int, torch.Tensor] = {}  # layer -> (H,) float64
        self.kl_sum: dict[int, torch.Tensor] = {}
        self.kl_count: dict[int, torch.Tensor] = {}
        self.lost_sum: dict[int, torch.Tensor] = {}  # full-attention mass on keys the variant gives 0
        self.sampled: dict[tuple[int, int], tuple] = {}  # reference only: (layer, q0) -> (p rows, Σ p log p, live)

    def wants_probs(self, n: int) -> bool:
        return False

    def record(self, layer, res, q, k, scale, native=None) -> None:
        pass

    def sinks(self, layer: int, ctx, q: torch.Tensor, k: torch.Tensor) -> tuple:
        rows = self.rows.to(q.device)
        B, H = q.shape[:2]

        def sink(chunk) -> None:
            q0, q1, p = chunk.q0, chunk.q1, chunk.p
            kept = chunk.kept  # keys outside the chunk's columns are masked: they count as removed
            if self.sparse_probs:
                kept = kept & (p > 0)
            _add(self.kept, layer, kept.sum(dim=(-2, -1)).expand(B, H).sum(0).double())
            lo, hi = torch.searchsorted(rows, q0), torch.searchsorted(rows, q1)
            if hi == lo:
                return
            local = rows[lo:hi] - q0
            reach = int(chunk.kv_idx[-1]) + 1  # no key at or after it has probability
            p_rows = chunk.wide(p[:, :, local].float(), 0.0)[..., :reach]  # (B, H, r, reach)
            live = kept[..., local, :].any(-1).expand(B, H, len(local))
            if self.reference is None:
                ent = torch.einsum("bhrw,bhrw->bhr", p_rows, torch.log(p_rows + KL_EPS)).double()
                self.sampled[(layer, q0)] = (p_rows.clone(), ent, live)
                return
            pf, ent, ref_live = self.reference.sampled[(layer, q0)]
            width = max(pf.shape[-1], reach)
            pf, pv = _pad_to(pf, width), _pad_to(p_rows, width)
            cross = torch.einsum("bhrw,bhrw->bhr", pf, torch.log(pv + KL_EPS)).double()
            kl = (ent - cross).clamp_min(0.0).masked_fill(~ref_live, 0.0)  # ≥ 0 up to rounding
            lost = torch.einsum("bhrw,bhrw->bhr", pf, (pv == 0).float()).double().masked_fill(~ref_live, 0.0)
            _add(self.kl_sum, layer, kl.sum(dim=(0, 2)))
            _add(self.lost_sum, layer, lost.sum(dim=(0, 2)))
            _add(self.kl_count, layer, ref_live.sum(dim=(0, 2)).double())

        return (sink,)


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] == width else torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _add(acc: dict, key, value: torch.Tensor) -> None:
    acc[key] = acc[key] + value.cpu() if key in acc else value.cpu()


def sample_rows(n: int, limit: int = KL_ROWS) -> torch.Tensor:
    """Query rows used for the attention KL: all of them, or `limit` evenly spaced (first and last kept)."""
    if n <= limit:
        return torch.arange(n)
    return torch.as_tensor(np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64)))


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One forward pass worth of input: the encoded batch, its labels (ViT) and masked positions (MLM)."""

    enc: Encoded
    labels: torch.Tensor | None = None  # class labels (B,) for a classifier
    masked: torch.Tensor | None = None  # MLM: positions replaced by the mask token
    targets: torch.Tensor | None = None  # MLM: the original ids at those positions


def task_metric(lm: LoadedModel) -> str | None:
    if lm.kind == "causal":
        return "perplexity"
    if lm.kind == "bidirectional":
        return "masked_accuracy" if lm.output_kind == "logits" else "embedding_cosine"
    return "accuracy" if lm.labels else "embedding_cosine"


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace inside each collapsed to single spaces."""
    out = [" ".join(p.split()) for p in text.replace("\r\n", "\n").split("\n\n")]
    return [p for p in out if p]


def text_batches(lm: LoadedModel, text: str, *, limit: int | None = None, max_tokens: int | None = None,
                 seed: int = 0) -> list[Batch]:
    """A causal LM reads the whole text as one input (long-context perplexity); an encoder reads
    each paragraph (blank-line separated) as one input. Whitespace runs, newlines included, become
    single spaces. `max_tokens` truncates each input, `limit` caps their number."""
    docs = [" ".join(text.split())] if lm.kind == "causal" else paragraphs(text)
    docs = [d for d in docs if d][:limit]
    if not docs:
        raise InputError("the input text is empty; give a text with some words")
    batches = []
    for i, doc in enumerate(docs):
        if max_tokens is not None:  # every word is at least one token: the cut keeps ≥ max_tokens tokens
            doc = " ".join(doc.split(" ")[:max_tokens])
        enc = lm.encode_text(doc)
        if max_tokens is not None and len(enc.token_ids) > max_tokens:
            enc = truncate(enc, max_tokens)
        batch = Batch(enc)
        if task_metric(lm) == "masked_accuracy":
            batch = masked_batch(lm, enc, seed=seed + i)
        batches.append(batch)
    return batches


def truncate(enc: Encoded, n: int) -> Encoded:
    inputs = {k: v[:, :n] for k, v in enc.inputs.items()}
    ctx = replace(enc.ctx, n=n, special=enc.ctx.special[:n], row=enc.ctx.row[:n], col=enc.ctx.col[:n])
    return replace(enc, inputs=inputs, tokens=enc.tokens[:n], token_ids=enc.token_ids[:n], ctx=ctx)


def mask_positions(special: torch.Tensor, *, fraction: float = MASK_FRACTION, seed: int = 0) -> torch.Tensor:
    """Sorted positions to mask: round(fraction × non-special tokens), at least one, a seeded choice."""
    candidates = np.flatnonzero(~special.cpu().numpy())
    if candidates.size == 0:
        raise InputError("the text has no ordinary token to mask")
    count = max(1, round(fraction * candidates.size))
    chosen = np.random.default_rng(seed).choice(candidates, size=count, replace=False)
    return torch.as_tensor(np.sort(chosen))


def masked_batch(lm: LoadedModel, enc: Encoded, *, seed: int = 0) -> Batch:
    mask_id = lm.adapter.tokenizer.mask_token_id
    if mask_id is None:
        raise InputError(f"{lm.model_id} has an MLM head but its tokenizer has no mask token")
    where = mask_positions(enc.ctx.special, seed=seed)
    ids = enc.inputs["input_ids"].clone()
    targets = ids[0, where].clone()
    ids[0, where] = mask_id
    return Batch(replace(enc, inputs={**enc.inputs, "input_ids": ids}), masked=where, targets=targets)


def digits_batches(lm: LoadedModel, *, limit: int | None = None, batch_size: int = 64) -> list[Batch]:
    """The held-out digits split (models/digits_data.py) in batches; one token context for all."""
    from models.digits_data import digit_image, load_digits_split, to_pixel_values

    _, _, x_test, y_test = load_digits_split()
    x_test, y_test = x_test[:limit], y_test[:limit]
    sample = lm.encode_image(digit_image(0))
    key = next(iter(sample.inputs))
    batches = []
    for b0 in range(0, len(x_test), batch_size):
        pixels = to_pixel_values(x_test[b0:b0 + batch_size]).to(lm.device)
        enc = replace(sample, inputs={key: pixels}, image=None)
        batches.append(Batch(enc, labels=torch.as_tensor(y_test[b0:b0 + batch_size])))
    return batches


def image_batches(lm: LoadedModel, images: list, *, limit: int | None = None) -> list[Batch]:
    return [Batch(lm.encode_image(img)) for img in images[:limit]]


def default_batches(lm: LoadedModel, *, limit: int | None = None, max_tokens: int | None = None) -> list[Batch]:
    """The shipped text for language models, the digits test split for digits-vit, else two sample photos."""
    if lm.kind != "vit":
        return text_batches(lm, PERPLEXITY_TEXT.read_text(encoding="utf-8"), limit=limit, max_tokens=max_tokens)
    if lm.model_id == "digits-vit":
        return digits_batches(lm, limit=limit)
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    return image_batches(lm, photos, limit=limit)


# ---------------------------------------------------------------------------------------------
# one forward pass and the output comparison
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def model_output(lm: LoadedModel, batch: Batch) -> torch.Tensor:
    """causal: final hidden states (N, D) (projected later, in chunks); MLM: logits at the masked
    positions (M, V); encoder: mean-pooled embedding (1, D); ViT: class scores or CLS state (B, C)."""
    inputs, m = batch.enc.inputs, lm.module
    if lm.kind == "causal":
        return m.base_model(**inputs).last_hidden_state[0].float()
    if lm.kind == "vit":
        if lm.backend == "timm":
            return m(inputs["x"]).float()
        out = m(**inputs)
        return (out.logits if lm.labels else out.last_hidden_state[:, 0]).float()
    out = m(**inputs)
    if lm.output_kind == "logits":
        return out.logits[0, batch.masked].float()
    hidden = out.last_hidden_state[0].float()
    weight = inputs.get("attention_mask", torch.ones(1, hidden.shape[0]))[0].float()[:, None].to(hidden.device)
    return ((hidden * weight).sum(0) / weight.sum())[None]


def lm_log_probs(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """log-softmax of the LM head over a chunk of final hidden states (c, D) -> (c, V)."""
    logits = lm.module.get_output_embeddings()(hidden.to(lm.module.dtype)).float()
    cap = getattr(lm.module.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, dim=-1)


def _kl_agree(lf: torch.Tensor, lv: torch.Tensor) -> tuple[float, float]:
    """Sums over rows of KL(full ‖ variant) and of argmax agreement, from log-probabilities."""
    kl = (lf.exp() * (lf - lv)).sum(-1).clamp_min(0.0).sum()
    return float(kl), float((lf.argmax(-1) == lv.argmax(-1)).sum())


@torch.no_grad()
def compare_outputs(lm: LoadedModel, batch: Batch, ref: torch.Tensor, outs: list[torch.Tensor]) -> list[dict]:
    """Sums for one batch and each output in `outs`: {"n": rows compared, "kl", "agree", and the task's
    own sums}, plus "seconds" spent on that output. A causal LM projects the reference once per
    chunk of positions, shared by every output."""
    metric = task_metric(lm)
    if metric != "perplexity":
        return [_timed(lambda out=out: _compare_small(metric, batch, ref, out)) for out in outs]
    ids = batch.enc.inputs["input_ids"][0]
    sums = [{"n": 0.0, "kl": 0.0, "agree": 0.0, "nll": 0.0, "scored": 0.0, "seconds": 0.0} for _ in outs]
    for c0 in range(0, ref.shape[0], VOCAB_CHUNK):
        c1 = min(ref.shape[0], c0 + VOCAB_CHUNK)
        lf = lm_log_probs(lm, ref[c0:c1])
        labels = ids[c0 + 1:c1 + 1]
        for out, acc in zip(outs, sums):
            t0 = time.perf_counter()
            lv = lf if out is ref else lm_log_probs(lm, out[c0:c1])  # `full` everywhere is the reference
            kl, agree = _kl_agree(lf, lv)
            nll = -lv[: len(labels)].gather(-1, labels[:, None].to(lv.device)).sum()
            acc.update(n=acc["n"] + c1 - c0, kl=acc["kl"] + kl, agree=acc["agree"] + agree,
                       nll=acc["nll"] + float(nll), scored=acc["scored"] + len(labels),
                       seconds=acc["seconds"] + time.perf_counter() - t0)
    return sums


def _timed(fn) -> dict:
    t0 = time.perf_counter()
    sums = fn()
    return {**sums, "seconds": time.perf_counter() - t0}


def _compare_small(metric: str | None, batch: Batch, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    if metric == "embedding_cosine":
        cos = F.cosine_similarity(ref, out, dim=-1)
        return {"n": float(len(cos)), "cos": float(cos.sum())}
    lf, lv = F.log_softmax(ref, -1), F.log_softmax(out, -1)
    kl, agree = _kl_agree(lf, lv)
    sums = {"n": float(len(lf)), "kl": kl, "agree": agree}
    truth = batch.targets if metric == "masked_accuracy" else batch.labels
    if truth is not None:
        sums["correct"] = float((lv.argmax(-1).cpu() == truth.cpu()).sum())
    return sums


def metric_value(metric: str | None, sums: dict[str, float]) -> float | None:
    if metric == "perplexity":
        return math.exp(sums["nll"] / sums["scored"]) if sums.get("scored") else None
    if metric == "embedding_cosine":
        return sums["cos"] / sums["n"]
    return sums["correct"] / sums["n"] if "correct" in sums else None


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """rows: the tidy table, one dict per variant point. heads: spec -> {"kl", "sparsity"} (L, H) arrays."""

    model_id: str
    metric: str | None
    rows: list[dict]
    heads: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def table(self, per_head: bool = False) -> list[dict]:
        if not per_head:
            return [dict(r) for r in self.rows]
        out = []
        for r in self.rows:
            h = self.heads.get(r["variant"])
            out.append({**r, "kl_heads": None if h is None else h["kl"].round(6).tolist(),
                        "sparsity_heads": None if h is None else h["sparsity"].round(6).tolist()})
        return out


@dataclass
class _Point:
    label: str
    variant: Variant
    calibration: dict | None
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)
    heads: dict[str, np.ndarray] = field(default_factory=dict)  # kept, allowed, kl_sum, lost_sum, kl_n: (L, H)

    def absorb(self, stats: AttnStats, n_layers: int, n_heads: int) -> None:
        """Add one run's counts; `stats.reference.kept` is what the model's own mask allows."""
        self._add(n_layers, n_heads, kept=stats.kept, allowed=stats.reference.kept, kl_sum=stats.kl_sum,
                  lost_sum=stats.lost_sum, kl_n=stats.kl_count)

    def absorb_reference(self, ref: AttnStats, n_layers: int, n_heads: int) -> None:
        """`full` on every layer is the reference run: every allowed score kept, KL and mass lost 0."""
        live = {}
        for (layer, _), (_, _, rows_live) in ref.sampled.items():
            _add(live, layer, rows_live.sum(dim=(0, 2)).double())
        self._add(n_layers, n_heads, kept=ref.kept, allowed=ref.kept, kl_n=live)

    def _add(self, n_layers: int, n_heads: int, **sources) -> None:
        for name in ("kept", "allowed", "kl_sum", "lost_sum", "kl_n"):
            self.heads.setdefault(name, np.zeros((n_layers, n_heads)))
            for layer, value in sources.get(name, {}).items():
                self.heads[name][layer] += value.numpy()


def sweep(lm: LoadedModel, specs: list[str] | str, *, batches: list[Batch] | None = None,
          limit: int | None = None, max_tokens: int | None = None, kl_rows: int = KL_ROWS,
          layers: list[int] | None = None, attention: bool = True, progress=None, step=None) -> SweepResult:
    """Run `full` and every variant point (grid specs expanded) on the same inputs; see the module doc.

    batches: the inputs (default: `default_batches`); `layers` limits where variants apply.
    attention=False skips the attention statistics (sparsity, KL: None), the full runs then use
    the fast SDPA path: for quick output-only sweeps. progress(message) says what runs next;
    step(done, total) counts the forward passes (the reference and every other point, per input)."""
    say = progress or (lambda _m: None)
    labels = expand_specs(specs)
    if not labels:
        raise VariantError("no variant given; name at least one, e.g. full sliding_window:w=64")
    batches = batches if batches is not None else default_batches(lm, limit=limit, max_tokens=max_tokens)
    if not batches:
        raise InputError("the input set is empty")
    ctx0 = batches[0].enc.ctx
    points, seen = [], set()
    for label in labels:
        v = parse_variant(label)
        if v.spec() in seen:  # e.g. "topk" and "topk:k=auto"
            continue
        seen.add(v.spec())
        v.check(ctx0)
        points.append(_Point(label, v, None))
    kl_rows = fit_memory(lm, batches, points, attention=attention, kl_rows=kl_rows, say=say)  # before any run
    for pt in points:
        if getattr(pt.variant, "needs_calibration", False):
            pt.calibration = calibrate(lm, pt.variant, default_calibration(lm))
    where = frozenset(layers) if layers is not None else None
    runs = len(batches) * (1 + sum(not (pt.variant.is_full and where is None) for pt in points))
    done = 0

    def ran() -> None:
        nonlocal done
        done += 1
        if step is not None:
            step(done, runs)

    for i, batch in enumerate(batches):
        say(f"input {i + 1}/{len(batches)}: full attention")
        rows = sample_rows(batch.enc.ctx.n, kl_rows)
        ref_stats = AttnStats(rows) if attention else None
        with plan(CallPlan(FULL, batch.enc.ctx, recorder=ref_stats)):
            ref = model_output(lm, batch)
        ran()
        outs = []
        for pt in points:
            if pt.variant.is_full and where is None:  # the reference run itself: nothing to run again
                outs.append(ref)
                if ref_stats is not None:
                    pt.absorb_reference(ref_stats, lm.n_layers, lm.n_heads)
                continue
            say(f"input {i + 1}/{len(batches)}: {pt.variant.spec()}")
            t0 = time.perf_counter()
            ctx = batch.enc.ctx if pt.calibration is None else replace(batch.enc.ctx, calibration=pt.calibration)
            stats = AttnStats(rows, ref_stats, sparse_probs=pt.variant.row_probs is not None) if attention else None
            with plan(CallPlan(pt.variant, ctx, recorder=stats, layers=where)):
                outs.append(model_output(lm, batch))
            ran()
            if stats is not None:
                pt.absorb(stats, lm.n_layers, lm.n_heads)
            pt.seconds += time.perf_counter() - t0
        for pt, sums in zip(points, compare_outputs(lm, batch, ref, outs)):
            pt.seconds += sums.pop("seconds")
            for key, value in sums.items():
                pt.sums[key] = pt.sums.get(key, 0.0) + value
    return _result(lm, points, batches)


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

MIN_KL_ROWS = 16


def sweep_bytes(lm: LoadedModel, batches: list[Batch], points: list[_Point], *, attention: bool,
                kl_rows: int) -> int:
    """What a sweep holds at its peak besides the loaded model, in bytes (float32): one forward pass
    (activations and the attention path's chunk buffers), the outputs of every point, the LM head's
    chunk of log-probabilities, the reference's sampled attention rows, and a dam calibration."""
    from models.memory import dims, forward_estimate

    config = getattr(lm.module, "config", None)
    vocab = getattr(config, "vocab_size", 0) if task_metric(lm) in ("perplexity", "masked_accuracy") else 0
    L, H = lm.n_layers, lm.n_heads
    n = max(b.enc.ctx.n for b in batches)
    batch = max(_batch_size(b) for b in batches)
    forward = batch * forward_estimate(lm, n).total  # the trace's own estimate of one forward pass
    outputs = (len(points) + 1) * batch * n * dims(lm).hidden * 4
    head = 5 * VOCAB_CHUNK * vocab * 4
    rows = min(kl_rows, n)
    sampled = L * H * batch * rows * n * 4 * (0.5 if lm.kind == "causal" else 1.0) if attention else 0
    dam = max((L * H * min(n, 2048) ** 2 * 4 for pt in points if pt.variant.name == "dam"), default=0)
    return int(forward + outputs + head + sampled + dam)


def fit_memory(lm: LoadedModel, batches: list[Batch], points: list[_Point], *, attention: bool, kl_rows: int,
               say=print) -> int:
    """The number of KL rows per input that keeps the sweep inside the memory budget (halved from kl_rows
    down to MIN_KL_ROWS, said in one line); a sweep that does not fit even then is refused before it runs."""
    from models.memory import budget_bytes, require

    budget, rows = budget_bytes(), kl_rows
    while attention and rows > MIN_KL_ROWS and sweep_bytes(lm, batches, points, attention=True, kl_rows=rows) > budget:
        rows = max(MIN_KL_ROWS, rows // 2)
    if rows < kl_rows:
        say(f"attention KL on {rows} rows per input instead of {kl_rows}, to stay inside the memory budget")
    require(sweep_bytes(lm, batches, points, attention=attention, kl_rows=rows), "this sweep")
    return rows


def _result(lm: LoadedModel, points: list[_Point], batches: list[Batch]) -> SweepResult:
    metric = task_metric(lm)
    rows, heads = [], {}
    for pt in points:
        spec = pt.variant.spec()
        attn = dict.fromkeys(("sparsity", "attn_kl", "attn_kl_max", "attn_mass_lost"))
        if pt.heads:
            kept, allowed, kl_sum, lost_sum, kl_n = (
                pt.heads[k] for k in ("kept", "allowed", "kl_sum", "lost_sum", "kl_n"))
            kl = kl_sum / np.maximum(kl_n, 1)
            heads[spec] = {"kl": kl, "sparsity": kept / np.maximum(allowed, 1)}
            attn.update(sparsity=float(kept.sum() / max(allowed.sum(), 1)), attn_kl=float(kl.mean()),
                        attn_kl_max=float(kl.max()), attn_mass_lost=float((lost_sum / np.maximum(kl_n, 1)).mean()))
        sums = pt.sums
        has_kl = "kl" in sums
        rows.append({
            "model": lm.model_id,
            "variant": spec,
            "name": pt.variant.name,
            "family": pt.variant.family,
            "params": {k: _plain(v) for k, v in pt.variant.resolved(batches[0].enc.ctx).items()},
            **attn,
            "output_kl": sums["kl"] / sums["n"] if has_kl else None,
            "top1_agreement": sums["agree"] / sums["n"] if has_kl else None,
            "metric": metric,
            "value": metric_value(metric, sums),
            "n_inputs": int(sum(_batch_size(b) for b in batches)),
            "n_tokens": int(sum(b.enc.ctx.n * _batch_size(b) for b in batches)),
            "seconds": round(pt.seconds, 3),
        })
    return SweepResult(lm.model_id, metric, rows, heads)


def _batch_size(batch: Batch) -> int:
    return int(next(iter(batch.enc.inputs.values())).shape[0])


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
