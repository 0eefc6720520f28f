"""Joint query–key projections of 20 000 points (10 000 queries + 10 000 keys) in 2D on this CPU (JSON on stdout).

Real q and k: digits-vit layer 1 head 0 over the first 154 test digits (65 tokens each, cut to 10 000
tokens, D = 16), recorded with analysis.qk_embed.collect; plus the same projections of synthetic
Gaussian clusters at D = 64 (a language model's head size). Times are of `analysis.qk_embed.project`,
the code path the page runs (UMAP seeded, hence single-threaded; t-SNE with one OpenMP thread).
UMAP's numba compilation happens once per process; it is timed apart as `umap_jit_s` (5000 points).

Usage: python -m bench.bench_qk_embed [--points 20000] [--no-tsne] [--no-synthetic]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGETS = {"umap": 60.0, "pca": 1.0}


def real_qk(tokens: int) -> tuple[np.ndarray, dict]:
    from analysis import qk_embed as qe
    from models.registry import load

    lm = load("digits-vit")
    images, names = qe.digit_inputs(-(-tokens // 65))
    t0 = time.perf_counter()
    qks = qe.collect(lm, images, 1, names=names)
    collect_s = time.perf_counter() - t0
    n = qe.normalise(qks.q[0, :tokens], qks.k[0, :tokens])
    return np.concatenate([n.q, n.k]), {
        "source": "digits-vit layer 1 head 0, normalised (key translation + norm scaling)",
        "inputs": len(images), "collect_s": round(collect_s, 2),
    }


def synthetic_qk(tokens: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim)) * 2.0
    x = centres[rng.integers(0, 40, 2 * tokens)] + rng.normal(size=(2 * tokens, dim))
    return x.astype(np.float32), {"source": f"synthetic: 40 Gaussian clusters in {dim}-D (note: not a model's q/k)"}


def time_it(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def measure(x: np.ndarray, meta: dict, tsne: bool) -> dict:
    from analysis.qk_embed import project

    row = dict(meta, points=len(x), dim=x.shape[1], dims=2)
    row["pca_s"] = time_it(lambda: project(x, "pca", 2), repeats=3)
    row["umap_s"] = time_it(lambda: project(x, "umap", 2, seed=0))
    if tsne:
        row["tsne_s"] = time_it(lambda: project(x, "tsne", 2, seed=0))
    for method, target in TARGETS.items():
        row[f"{method}_meets_target"] = row[f"{method}_s"] <= target
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20000, help="queries + keys")
    ap.add_argument("--no-tsne", action="store_true", help="skip t-SNE (minutes at 20 000 points)")
    ap.add_argument("--no-synthetic", action="store_true", help="only the real digits-vit q/k")
    args = ap.parse_args()
    import torch

    from analysis.qk_embed import project

    tokens = args.points // 2
    load_start = [round(v, 2) for v in os.getloadavg()]
    # ≥ 4096 points: below that UMAP takes exact neighbours and pynndescent's code is not compiled
    jit = time_it(lambda: project(np.random.default_rng(0).normal(size=(5000, 16)), "umap", 2))
    rows = [measure(*real_qk(tokens), tsne=not args.no_tsne)]
    if not args.no_synthetic:
        rows.append(measure(*synthetic_qk(tokens), tsne=False))
    print(json.dumps({
        "bench": "qk_embed_cpu", "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_at_start": load_start, "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
        "versions": {p: version(p) for p in ("umap-learn", "scikit-learn", "numba", "numpy")},
        "targets_s": TARGETS, "umap_jit_s": jit,
        "note": "umap_jit_s: the first UMAP call in a process (5000 points, mostly numba/pynndescent compilation); "
                "every later call skips it. umap_s and tsne_s are warm calls",
        "results": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
