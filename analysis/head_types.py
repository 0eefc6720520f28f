"""Head types: which heads look at the previous token, copy induction-style, park on a sink, stay local.

Scores per layer and head, each in [0, 1], from the model's own (full) attention:

- `previous_token` — mean attention from token i to i−1 (rows i ≥ 1), on natural text.
- `induction` — on random ordinary tokens repeated twice ([BOS] r r, r of `length` distinct ids):
  mean attention from each token of the second copy to the token right after its first
  occurrence (Olsson et al., 2022, "In-context learning and induction heads").
- `sink` — mean attention mass on the first token (rows i ≥ 1), on natural text; on a ViT the
  first token is CLS.
- `distance` — mean attention distance, normalised per row by the farthest key the row may see
  (0: attends to itself, 1: attends to the farthest key), mean over rows; on text |i−j|, on a ViT
  the Euclidean grid distance between patches. The first token and special tokens take no part
  (the attention among the other keys is renormalised), so a sink head is not counted as global.
  Low = local head, high = global head.

Natural text: the shipped calibration text (models/data/calibration.txt); on a ViT the default
calibration image. Everything is deterministic (fixed seed). On a ViT there is no previous
token and no induction: those scores are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kernels.context import TokenContext
from kernels.maps import token_distance
from models.calibrate import default_calibration
from models.inject import FULL, CallPlan, plan
from models.loaded import Encoded, InputError, LoadedModel
from models.memory import reserve, trace_estimate
from models.recorder import Recorder
from models.trace import array_key
from models.tracer import encode

SCORES = ("previous_token", "induction", "sink", "distance")
# ranking keys: (score, sign); local heads are the ones with the smallest distance
RANKINGS = {"previous_token": ("previous_token", 1), "induction": ("induction", 1), "sink": ("sink", 1),
            "local": ("distance", -1), "global": ("distance", 1)}
# one label per head: the first rule that holds, in this order
THRESHOLDS = (("induction", "induction", 0.3), ("previous_token", "previous-token", 0.5), ("sink", "sink", 0.5),
              ("distance", "local", -0.2))  # negative: score ≤ 0.2
INDUCTION_LENGTH = 64


# ---------------------------------------------------------------------------------------------
# scores from attention probabilities (H, N, N)
# ---------------------------------------------------------------------------------------------


def previous_token_score(probs: np.ndarray) -> np.ndarray:
    """(H,) mean of probs[h, i, i−1] over i ≥ 1."""
    n = probs.shape[-1]
    i = np.arange(1, n)
    return probs[:, i, i - 1].mean(-1)


def induction_score(probs: np.ndarray, start: int, length: int) -> np.ndarray:
    """(H,) for a sequence holding r at [start, start+length) and again right after it: mean over
    t of probs[h, start+length+t, start+t+1] (the token after the first occurrence of r[t])."""
    t = np.arange(length)
    return probs[:, start + length + t, start + t + 1].mean(-1)


def sink_score(probs: np.ndarray) -> np.ndarray:
    """(H,) mean attention mass on the first token, rows i ≥ 1."""
    return probs[:, 1:, 0].mean(-1)


def distance_score(probs: np.ndarray, dist: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(H,) mean over rows of (Σ_j p_ij d_ij / Σ_j p_ij) / max_j d_ij, j over the allowed keys only
    (the attention among them, renormalised). Rows whose farthest allowed key is at distance 0, and
    rows of a head with no mass on allowed keys, are skipped.

    dist (N, N) distances, allowed (N, N) bool: keys that count for each row."""
    far = np.where(allowed, dist, 0).max(-1)  # (N,)
    rows = far > 0
    if not rows.any():
        return np.full(probs.shape[0], np.nan)
    p = np.where(allowed[rows], probs[:, rows], 0.0)  # (H, R, N)
    mass = p.sum(-1)
    mean = np.where(mass > 1e-9, (p * dist[rows]).sum(-1) / np.maximum(mass, 1e-30), np.nan) / far[rows]
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(m) if np.isfinite(m).any() else np.nan for m in mean])


def sequence_distances(n: int, causal: bool, excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """|i−j| and the keys that count: causal j ≤ i; never an `excluded` key (default: the first token,
    the usual attention sink, so that a sink head is not mistaken for a global one)."""
    pos = np.arange(n)
    dist = _distances(TokenContext.sequence(n, causal=causal))
    allowed = pos[None, :] <= pos[:, None] if causal else np.ones((n, n), dtype=bool)
    if excluded is None:
        excluded = pos == 0
    return dist, allowed & ~excluded[None, :]


def grid_distances(ctx: TokenContext) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean grid distances between patches; special tokens (CLS, registers) take no part."""
    patch = ~ctx.special.numpy()
    return _distances(ctx), patch[:, None] & patch[None, :]


def _distances(ctx: TokenContext) -> np.ndarray:
    """(N, N) the row statistics' own distance (kernels.maps.token_distance), as float64."""
    idx = torch.arange(ctx.n)
    return token_distance(ctx, idx[:, None], idx[None, :]).double().numpy()


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def ordinary_token_ids(tokenizer) -> np.ndarray:
    """Ids of ordinary vocabulary tokens: no special or added tokens, no [unused]/<...> markers."""
    skip = set(tokenizer.all_special_ids or []) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ids = np.array([i for i in range(len(tokenizer)) if i not in skip])
    toks = tokenizer.convert_ids_to_tokens(ids.tolist())
    marker = np.array([(t.startswith("[") and t.endswith("]")) or (t.startswith("<") and t.endswith(">"))
                       for t in toks])
    return ids[~marker]


def repeated_random_tokens(tokenizer, length: int = INDUCTION_LENGTH, seed: int = 0) -> tuple[list[int], int]:
    """([BOS] r r, start of the first r): r = `length` distinct ordinary ids drawn with `seed`.
    BOS is the tokenizer's bos token, else its cls token, else none."""
    rng = np.random.default_rng(seed)
    ordinary = ordinary_token_ids(tokenizer)
    if not 1 <= length <= len(ordinary):
        raise InputError(f"the induction length must be 1..{len(ordinary)} (distinct ordinary tokens), got {length}")
    r = rng.choice(ordinary, size=length, replace=False).tolist()
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    prefix = [first] if first is not None else []
    return prefix + r + r, len(prefix)


def encode_ids(lm: LoadedModel, ids: list[int], n_special_prefix: int) -> Encoded:
    tokenizer = lm.adapter.tokenizer
    t = torch.tensor([ids], device=lm.device)
    special = torch.zeros(len(ids), dtype=torch.bool)
    special[:n_special_prefix] = True
    ctx = TokenContext.sequence(len(ids), causal=lm.kind == "causal", n_layers=lm.n_layers, special=special)
    return Encoded(inputs={"input_ids": t, "attention_mask": torch.ones_like(t)},
                   tokens=tokenizer.convert_ids_to_tokens(ids), token_ids=list(ids), ctx=ctx)


def attention_probs(lm: LoadedModel, enc: Encoded) -> list[np.ndarray]:
    """Full attention probabilities (H, N, N) of every layer for one encoded input."""
    rec = Recorder(dense_limit=max(enc.ctx.n, 1))
    with plan(CallPlan(FULL, enc.ctx, recorder=rec)):
        lm.forward(enc)
    return [rec.arrays[array_key(layer, "probs")] for layer in range(lm.n_layers)]


# ---------------------------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadScores:
    model_id: str
    scores: dict[str, np.ndarray]  # SCORES -> (L, H); NaN where a score does not apply

    def top(self, ranking: str, k: int = 5) -> list[dict]:
        """The k heads ranked highest by `ranking` (a key of RANKINGS), each {"layer", "head", "score"}."""
        if ranking not in RANKINGS:
            raise InputError(f"unknown head type {ranking!r}; one of {', '.join(RANKINGS)}")
        name, sign = RANKINGS[ranking]
        a = self.scores[name]
        if np.isnan(a).all():
            return []
        key = np.where(np.isnan(a), np.inf, -sign * a)  # ascending; ties keep (layer, head) order
        order = np.argsort(key, axis=None, kind="stable")[:k]
        return [{"layer": int(i // a.shape[1]), "head": int(i % a.shape[1]), "score": float(a.flat[i])}
                for i in order]

    def types(self) -> np.ndarray:
        """(L, H) label per head: induction, previous-token, sink, local, else global (THRESHOLDS)."""
        shape = self.scores["sink"].shape
        out = np.full(shape, "global", dtype=object)
        done = np.zeros(shape, dtype=bool)
        for name, label, level in THRESHOLDS:
            a = self.scores[name]
            hit = ~done & ~np.isnan(a) & (a <= -level if level < 0 else a >= level)
            out[hit] = label
            done |= hit
        return out

    def to_json(self, k: int = 5) -> dict:
        return {
            "model": self.model_id,
            "top": {r: self.top(r, k) for r in RANKINGS},
            "scores": {n: np.where(np.isnan(a), None, a.round(6)).tolist() for n, a in self.scores.items()},
            "types": self.types().tolist(),
            "thresholds": {label: level for _, label, level in THRESHOLDS},
        }


def head_scores(lm: LoadedModel, *, text: str | None = None, length: int = INDUCTION_LENGTH,
                seed: int = 0) -> HeadScores:
    """Every score of SCORES for every head of `lm` (see the module doc). Both inputs' dense maps of every
    layer are held at once: refused first when that is over the memory budget (models.memory)."""
    natural = encode(lm, text=text) if text is not None else default_calibration(lm)
    repeated, start = None, 0
    need = trace_estimate(lm, natural.ctx.n, dense=True, qk=False, save=False)
    if lm.kind != "vit":
        ids, start = repeated_random_tokens(lm.adapter.tokenizer, length, seed)
        if lm.max_tokens is not None and len(ids) > lm.max_tokens:
            raise InputError(f"two copies of {length} tokens make {len(ids)} tokens; {lm.model_id} takes at most "
                             f"{lm.max_tokens}: use a shorter induction length")
        repeated = encode_ids(lm, ids, start)
        need = need + trace_estimate(lm, len(ids), dense=True, qk=False, save=False)
    with reserve(need, "the head types"):
        return _head_scores(lm, natural, repeated, start, length)


def _head_scores(lm: LoadedModel, natural: Encoded, repeated: Encoded | None, start: int, length: int) -> HeadScores:
    probs = attention_probs(lm, natural)
    L, H = lm.n_layers, lm.n_heads
    nan = np.full((L, H), np.nan)
    scores = {"sink": np.stack([sink_score(p) for p in probs])}
    if lm.kind == "vit":
        dist, allowed = grid_distances(natural.ctx)
        scores.update(previous_token=nan, induction=nan.copy())
    else:
        excluded = natural.ctx.special.numpy().copy()
        excluded[0] = True
        dist, allowed = sequence_distances(natural.ctx.n, lm.kind == "causal", excluded)
        scores["previous_token"] = np.stack([previous_token_score(p) for p in probs])
        rep = attention_probs(lm, repeated)
        scores["induction"] = np.stack([induction_score(p, start, length) for p in rep])
    scores["distance"] = np.stack([distance_score(p, dist, allowed) for p in probs])
    return HeadScores(lm.model_id, {name: scores[name] for name in SCORES})
