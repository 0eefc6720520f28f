"""Joint query–key embeddings of one attention head over many inputs (AttentionViz, Yeh et al., IEEE VIS 2023).

`collect` runs every input through the model and keeps the q, k (after rotary, key heads expanded
for GQA) and attention probabilities of one layer, every head — what `trace(..., qk=True)` records,
with a recorder that stops the pass after that layer. `normalise` puts one head's queries
and keys in one space where near means high attention, as AttentionViz does:

    c  = sqrt(mean‖k‖ / mean‖q‖)              norm scaling: c·q and k/c have the same mean norm
    q̂ = c · q
    k̂ = k / c + s,  s = mean(q̂) − mean(k / c) key translation: the key centroid meets the query centroid

q̂·k̂ = q·k + q̂·s: scaling q by c and k by 1/c keeps every q·k, and the translation adds a term that
depends on the query only — a constant along each softmax row — so every attention row is unchanged.
`project` runs PCA, t-SNE (scikit-learn) or UMAP (umap-learn) in 2 or 3 dimensions, seeded and
deterministic; `embed` = normalise + project for one head, cached per (model, layer, head, inputs,
method). Points are the T queries followed by the T keys.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.trace import array_key

CORPUS = Path(__file__).resolve().parent / "data" / "sentences.txt"
METHODS = ("pca", "tsne", "umap")
FIELDS = ("role", "position", "token_kind", "norm", "input")  # what a point can be coloured by
Progress = Callable[[float, str], None]  # (fraction done in [0, 1], message)


def load_corpus(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """Non-empty lines of a text file (default: the shipped corpus), one input each."""
    lines = [s.strip() for s in Path(path or CORPUS).read_text(encoding="utf-8").splitlines()]
    lines = [s for s in lines if s]
    return lines[:limit] if limit else lines


def digit_inputs(n: int, start: int = 0) -> tuple[list, list[str]]:
    """The first `n` digits of the test split as images, with names for hover."""
    from models.digits_data import digit_image, digit_label

    idx = range(start, start + n)
    return [digit_image(i) for i in idx], [f"digit {digit_label(i)} (test #{i})" for i in idx]


def inputs_hash(inputs: Sequence) -> str:
    h = hashlib.sha256()
    for x in inputs:
        if isinstance(x, str):
            h.update(b"T" + x.encode("utf-8", "surrogatepass"))
        else:  # a PIL image
            h.update(f"I{x.mode}:{x.size}".encode() + x.tobytes())
        h.update(b"\0")
    return h.hexdigest()[:20]


# -- collecting q and k -----------------------------------------------------------------------
@dataclass
class QKSet:
    """q and k of every head of one layer over a set of inputs; token t of the set is row t of q[h], k[h]."""

    model_id: str
    kind: str  # vit | causal | bidirectional
    layer: int
    q: np.ndarray  # (H, T, D)
    k: np.ndarray  # (H, T, D)
    tokens: list[str]  # (T,)
    token_kind: list[str]  # special | word | punctuation | number; CLS | patch for a ViT
    context: list[str]  # the token in its input, marked «like this»
    input_index: np.ndarray  # (T,) which input
    position: np.ndarray  # (T,) position in that input
    offsets: np.ndarray  # (n_inputs + 1,): input i holds tokens offsets[i]:offsets[i + 1]
    probs: list  # per input (H, n, n) attention of this layer, None above the trace's dense limit
    inputs: list  # the texts or PIL images, to re-trace one under a variant
    names: list[str]
    inputs_hash: str

    @property
    def n_heads(self) -> int:
        return self.q.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.q.shape[1]

    @property
    def n_inputs(self) -> int:
        return len(self.offsets) - 1


def collect(lm, inputs: Sequence, layer: int, *, names: Sequence[str] | None = None,
            progress: Progress | None = None) -> QKSet:
    """Run each input (a text or a PIL image) through `lm` up to `layer`; keep q, k, probs and token labels.

    What every input will keep is estimated first and refused over the memory budget (models.memory)."""
    from models.loaded import InputError
    from models.memory import one_layer_estimate, reserve
    from models.tracer import encode

    if not 0 <= layer < lm.n_layers:
        raise InputError(f"layer {layer} does not exist; {lm.model_id} has layers 0..{lm.n_layers - 1}")
    if not inputs:
        raise InputError("no inputs to embed")
    say = progress or (lambda _f, _m: None)
    names = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    encoded = [encode(lm, **_arg(x)) for x in inputs]
    need = one_layer_estimate(lm, [e.ctx.n for e in encoded])
    with reserve(need, f"the query–key set of {len(inputs)} inputs"):
        return _collect(lm, inputs, encoded, layer, names, say)


def _collect(lm, inputs: Sequence, encoded: list, layer: int, names: list[str], say: Progress) -> QKSet:
    qs, ks, probs, tokens, kinds, context, which, pos = [], [], [], [], [], [], [], []
    for i, enc in enumerate(encoded):
        arrays = record_layer(lm, enc, layer)
        qs.append(arrays[array_key(layer, "q")])
        ks.append(arrays[array_key(layer, "k")])
        probs.append(arrays.get(array_key(layer, "probs")))
        tokens += enc.tokens
        kinds += [token_kind(t, bool(s), lm.kind) for t, s in zip(enc.tokens, enc.ctx.special.tolist())]
        context += contexts(enc.tokens, names[i] if lm.kind == "vit" else None)
        which += [i] * len(enc.tokens)
        pos += range(len(enc.tokens))
        say((i + 1) / len(inputs), f"recorded {i + 1}/{len(inputs)} inputs")
    sizes = [q.shape[1] for q in qs]
    return QKSet(
        model_id=lm.model_id, kind=lm.kind, layer=layer,
        q=np.concatenate(qs, axis=1), k=np.concatenate(ks, axis=1),
        tokens=tokens, token_kind=kinds, context=context,
        input_index=np.asarray(which), position=np.asarray(pos), offsets=np.cumsum([0] + sizes),
        probs=probs, inputs=list(inputs), names=names, inputs_hash=inputs_hash(inputs),
    )


class _Stop(Exception):
    """Raised once the chosen layer is recorded: later layers cannot change its q, k or attention."""


def record_layer(lm, enc, layer: int) -> dict:
    """The arrays of one encoded input (`models.tracer.encode`): the stock model's q, k (H, N, D) and
    probs (H, N, N) of `layer`.

    The tracer's own machinery (CallPlan, Recorder) with a recorder that keeps one layer and ends the
    forward pass there, so a low layer of a deep model costs a fraction of a trace.
    """
    from models.inject import FULL, CallPlan, plan
    from models.loaded import ModelError
    from models.recorder import Recorder

    class OneLayer(Recorder):
        def sinks(self, at, ctx, q, k):
            return super().sinks(at, ctx, q, k) if at == layer else ()

        def record(self, at, res, q, k, scale):
            if at == layer:
                super().record(at, res, q, k, scale)
                raise _Stop

    rec = OneLayer(keep_qk=True)
    try:
        with plan(CallPlan(variant=FULL, ctx=enc.ctx, recorder=rec)):
            lm.forward(enc)
    except _Stop:
        pass
    if array_key(layer, "q") not in rec.arrays:
        raise ModelError(f"{lm.model_id} never ran attention layer {layer}")
    return rec.arrays


def _arg(x) -> dict:
    return {"text": x} if isinstance(x, str) else {"image": x}


_MARKS = ("Ġ", "▁", "##")


def token_kind(token: str, special: bool, kind: str = "causal") -> str:
    """special | word | punctuation | number for text (whitespace counts as punctuation); CLS | patch for a ViT."""
    if kind == "vit":
        return "CLS" if special else "patch"
    if special:
        return "special"
    t = token
    for m in _MARKS:
        t = t.removeprefix(m)
    t = t.strip()
    if not t or all(unicodedata.category(ch)[0] in "PSZC" for ch in t):
        return "punctuation"
    if re.fullmatch(r"[\d.,]*\d[\d.,]*", t):
        return "number"
    return "word"


def contexts(tokens: list[str], image_name: str | None = None, width: int = 48) -> list[str]:
    """Per token: its input with the token marked «…», clipped to `width` characters either side."""
    if image_name is not None:
        return [f"{image_name} · {t}" for t in tokens]
    pieces = _display(tokens)
    out = []
    for i, p in enumerate(pieces):
        left, right = "".join(pieces[:i]), "".join(pieces[i + 1:])
        lead = p[: len(p) - len(p.lstrip())]
        left = (left + lead).replace("\n", " ")
        right = right.replace("\n", " ")
        left = left if len(left) <= width else "…" + left[-width:]
        right = right if len(right) <= width else right[:width] + "…"
        out.append(f"{left}«{p.strip() or p}»{right}")
    return out


def _display(tokens: list[str]) -> list[str]:
    """Token strings that concatenate to readable text: byte-level (leading spaces) or WordPiece (##)."""
    glued = any(t[:1] in (" ", "Ġ", "▁") for t in tokens)
    if glued:
        return [t.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n") for t in tokens]
    return [t[2:] if t.startswith("##") else (" " if i else "") + t for i, t in enumerate(tokens)]


# -- normalising and projecting ---------------------------------------------------------------
@dataclass(frozen=True)
class Normalised:
    q: np.ndarray  # (T, D) c · q
    k: np.ndarray  # (T, D) k / c + shift
    shift: np.ndarray  # (D,) mean(c · q) − mean(k / c), added to every scaled key
    scale: float  # c


def normalise(q: np.ndarray, k: np.ndarray, *, translate: bool = True, scale: bool = True) -> Normalised:
    """AttentionViz's norm scaling, then key translation (formula in the module docstring)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    nq, nk = np.linalg.norm(q, axis=1).mean(), np.linalg.norm(k, axis=1).mean()
    c = float(np.sqrt(nk / nq)) if scale and nq > 0 and nk > 0 else 1.0
    qs, ks = q * c, k / c
    shift = qs.mean(0) - ks.mean(0) if translate else np.zeros(q.shape[1])
    return Normalised(q=qs, k=ks + shift, shift=shift, scale=c)


def project(x: np.ndarray, method: str = "pca", dims: int = 2, *, seed: int = 0,
            progress: Progress | None = None) -> np.ndarray:
    """(n, D) → (n, dims) float32 with PCA, t-SNE or UMAP; the same seed gives the same output."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; pick one of {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n <= max(dims, 4 if method != "pca" else dims):
        raise ValueError(f"{method} needs more than {max(dims, 4)} points, got {n}")
    say = progress or (lambda _f, _m: None)
    say(0.0, f"{method.upper()} of {n} points in {dims}D")
    if method == "pca":
        from sklearn.decomposition import PCA

        y = PCA(n_components=min(dims, x.shape[1]), svd_solver="full").fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
        # one OpenMP thread: on a busy 2-core machine libgomp's spin-waiting made the gradient 10-20× slower
        with threadpool_limits(1, user_api="openmp"):
            y = TSNE(n_components=dims, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        import warnings

        import umap

        # init="pca", not the spectral default: query and key clouds often form disconnected graphs, where
        # the eigensolver took 10-50 s of a 20 000-point run; seeded UMAP runs on one thread
        with warnings.catch_warnings():  # "graph is not fully connected" on small or clustered sets
            warnings.simplefilter("ignore", UserWarning)
            y = umap.UMAP(
                n_components=dims, n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1, init="pca",
                tqdm_kwds={"disable": False, "file": _TqdmSink(say), "bar_format": "{n}/{total}", "mininterval": 0.5},
            ).fit_transform(x)
    say(1.0, f"{method.upper()} done")
    y = np.asarray(y, dtype=np.float32)
    return y if y.shape[1] == dims else np.pad(y, ((0, 0), (0, dims - y.shape[1])))


class _TqdmSink:
    """A file for UMAP's tqdm bar (bar_format "{n}/{total}") that turns it into progress calls."""

    def __init__(self, say: Progress):
        self.say = say

    def write(self, s: str) -> None:
        m = re.search(r"(\d+)/(\d+)", s)
        if m and int(m.group(2)):
            self.say(int(m.group(1)) / int(m.group(2)), f"UMAP epoch {m.group(1)}/{m.group(2)}")

    def flush(self) -> None:
        pass


# -- embeddings -------------------------------------------------------------------------------
@dataclass
class Embedding:
    """One head's queries and keys in one 2D/3D space: point i < T is query i, point T + i is key i."""

    coords: np.ndarray  # (P, dims)
    role: np.ndarray  # (P,) "query" | "key"
    token_index: np.ndarray  # (P,) row in the QKSet
    position: np.ndarray
    input: np.ndarray
    token: list[str]
    token_kind: list[str]
    norm: np.ndarray  # (P,) norm of the model's own q or k (before normalising)
    context: list[str]
    model_id: str
    layer: int
    head: int
    method: str
    dims: int
    seed: int
    scale: float  # c of the norm scaling

    def __len__(self) -> int:
        return len(self.role)

    def field(self, name: str) -> np.ndarray:
        if name not in FIELDS:
            raise ValueError(f"cannot colour by {name!r}; pick one of {', '.join(FIELDS)}")
        return np.asarray(getattr(self, name))

    def point(self, i: int) -> dict:
        return {"index": i, "role": str(self.role[i]), "token": self.token[i], "token_kind": self.token_kind[i],
                "position": int(self.position[i]), "input": int(self.input[i]), "norm": float(self.norm[i]),
                "context": self.context[i], "token_index": int(self.token_index[i])}

    def table(self) -> dict[str, list]:
        """Columns for export: coordinates and every per-point field."""
        cols = {f"x{d}": self.coords[:, d].tolist() for d in range(self.dims)}
        cols.update(role=self.role.tolist(), token=self.token, token_kind=self.token_kind,
                    position=self.position.tolist(), input=self.input.tolist(), norm=self.norm.tolist(),
                    context=self.context)
        return cols


def embed(qks: QKSet, head: int, method: str = "pca", dims: int = 2, *, seed: int = 0,
          progress: Progress | None = None) -> Embedding:
    """Normalise and project one head's queries and keys; cached per (model, layer, head, inputs, method)."""
    if not 0 <= head < qks.n_heads:
        raise ValueError(f"head {head} does not exist; layer {qks.layer} has heads 0..{qks.n_heads - 1}")
    key = (qks.model_id, qks.layer, head, qks.inputs_hash, method, dims, seed)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    emb = _embedding(qks, head, np.arange(qks.n_tokens), method, dims, seed, progress)
    _CACHE.put(key, emb)
    return emb


def all_heads(qks: QKSet, *, max_tokens: int = 800, seed: int = 0, progress: Progress | None = None) -> list:
    """A small 2D PCA per head of the layer, on at most `max_tokens` tokens (the same seeded sample for all)."""
    idx = np.arange(qks.n_tokens)
    if len(idx) > max_tokens:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_tokens, replace=False))
    out = []
    for h in range(qks.n_heads):
        out.append(_embedding(qks, h, idx, "pca", 2, seed, None))
        if progress:
            progress((h + 1) / qks.n_heads, f"PCA of head {h + 1}/{qks.n_heads}")
    return out


def _embedding(qks: QKSet, head: int, idx: np.ndarray, method: str, dims: int, seed: int,
               progress: Progress | None) -> Embedding:
    q, k = qks.q[head][idx], qks.k[head][idx]
    nq = normalise(q, k)
    coords = project(np.concatenate([nq.q, nq.k]), method, dims, seed=seed, progress=progress)
    both = np.concatenate([idx, idx])
    tokens, kinds, ctx = ([lst[i] for i in both] for lst in (qks.tokens, qks.token_kind, qks.context))
    return Embedding(
        coords=coords, role=np.repeat(np.array(["query", "key"]), len(idx)), token_index=both,
        position=qks.position[both], input=qks.input_index[both], token=tokens, token_kind=kinds,
        norm=np.concatenate([np.linalg.norm(q, axis=1), np.linalg.norm(k, axis=1)]).astype(np.float32),
        context=ctx, model_id=qks.model_id, layer=qks.layer, head=head, method=method, dims=dims, seed=seed,
        scale=nq.scale,
    )


class _LRU:
    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_CACHE = _LRU(16)
_MAPS = _LRU(32)


# -- linked attention -------------------------------------------------------------------------
@dataclass
class AttentionRow:
    """The selected point's attention in its input: a query's row over keys, or a key's column over queries."""

    tokens: list[str]  # the tokens of the point's input
    role: str
    position: int
    input: int
    layer: int
    head: int
    full: np.ndarray  # (n,)
    full_map: np.ndarray  # (n, n) the head's map for this input
    variant: str = "full"
    changed: np.ndarray | None = None  # the same row with `variant` in this layer
    changed_map: np.ndarray | None = None


def attention_row(qks: QKSet, emb: Embedding, i: int, *, lm=None, variant: str = "full") -> AttentionRow:
    """Attention of point `i` of `emb`; with `lm` and a variant, also under that variant in this layer only."""
    t = int(emb.token_index[i])
    inp, pos, role = int(qks.input_index[t]), int(qks.position[t]), str(emb.role[i])
    maps = qks.probs[inp]
    if maps is None:
        raise ValueError(f"input {inp} is longer than the trace's dense limit; it has no attention map")
    lo, hi = qks.offsets[inp], qks.offsets[inp + 1]
    full_map = maps[emb.head]
    row = AttentionRow(tokens=qks.tokens[lo:hi], role=role, position=pos, input=inp, layer=qks.layer,
                       head=emb.head, full=_pick(full_map, role, pos), full_map=full_map)
    if lm is not None and variant.strip() not in ("", "full"):
        spec, changed = variant_map(lm, qks, inp, variant)
        row.variant, row.changed_map = spec, changed[emb.head]
        row.changed = _pick(row.changed_map, role, pos)
    return row


def _pick(m: np.ndarray, role: str, pos: int) -> np.ndarray:
    return m[pos] if role == "query" else m[:, pos]


def variant_map(lm, qks: QKSet, input_index: int, variant: str) -> tuple[str, np.ndarray]:
    """(canonical spec, (H, n, n) map of the layer) with `variant` applied in this layer only.

    Earlier layers run the stock attention, so q and k of this layer are those of the embedding and
    the change in the map is the variant's alone.
    """
    from models.tracer import trace

    key = (qks.model_id, qks.layer, qks.inputs_hash, input_index, variant)
    hit = _MAPS.get(key)
    if hit is None:
        tr = trace(lm, **_arg(qks.inputs[input_index]), variant=variant, layers=[qks.layer])
        hit = (tr.variant, tr.attention(qks.layer))
        _MAPS.put(key, hit)
    return hit
