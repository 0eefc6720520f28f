"""Bytes each view sends to the browser, at N = 128, 1024 and 8192 tokens (JSON on stdout).

    python -m bench.bench_payload [--sizes 128 1024 8192] [--model smollm2-135m]

The payload of a figure is `plotly.io.to_json(fig, validate=False)`, exactly what `st.plotly_chart` puts in its
message, on every rerun that draws it. Each view is built the way its page builds it (the figures of the
catalog, plus the page-only ones: token lines, exact tile, per-head change, outputs, mask). Target: ≤ 5 MB for
every view at any N (issue 14, item 15). digits-vit's image view is measured at its only size (65 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LIMIT = 5_000_000
VARIANT_B = "sliding_window:w=64,sinks=4"


def payload(fig) -> int:
    import plotly.io as pio

    return len(pio.to_json(fig, validate=False))


def text_views(lm, n: int) -> dict[str, int]:
    from analysis.compare import compare
    from analysis.tiles import tile
    from app.views import catalog
    from app.views.compare_view import output_figure, per_head
    from app.views.head_view import MAX_LINES_N, tile_heatmap, token_lines
    from bench.bench_cpu import long_text
    from models.tracer import trace

    text = long_text(lm, n)
    a = trace(lm, text=text, max_tokens=n, qk=True)
    b = trace(lm, text=text, max_tokens=n, qk=True, variant=VARIANT_B)
    layer, head = lm.n_layers // 2, 1
    sel = {"layer": layer, "head": head}
    out = {}
    for view in ("model", "head", "neuron", "mask", "metrics", "qk"):
        if catalog.why_not(view, a) is None and not (view == "mask" and a.n > 4096):
            out[view] = payload(catalog.build_view(view, a, sel if view != "metrics" else {}))
    out["compare"] = payload(catalog.build_view("compare", (a, b), sel))
    cmp = compare(a, b)
    out["compare per-head change"] = payload(per_head(cmp, "moved", a_name=a.variant, b_name=b.variant))
    out["compare outputs"] = payload(output_figure(cmp.output, a.variant, b.variant))
    side = min(128, a.n)
    rows = cols = (a.n - side, a.n)
    out["exact tile (128²)"] = payload(tile_heatmap(a, layer, head, rows, cols, tile(a, layer, head, rows, cols)))
    if a.n <= MAX_LINES_N:
        out["token lines (every head)"] = payload(token_lines(a, layer, list(range(a.n_heads))))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 1024, 8192])
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args()

    from app.views import catalog
    from models.registry import load
    from models.tracer import trace

    lm = load(args.model)
    results = []
    for n in args.sizes:
        t0 = time.perf_counter()
        views = text_views(lm, n)
        results.append({"model": args.model, "tokens": n, "bytes": views, "largest": max(views.values()),
                        "seconds": round(time.perf_counter() - t0, 1)})
    vit = load("digits-vit")
    from app.examples import load_image_example

    tr = trace(vit, image=load_image_example("digit #0"), image_name="digit #0", qk=True)
    image = {"image (each head)": payload(catalog.build_view("image", tr, {"layer": 1})),
             "image (rollout)": payload(catalog.build_view("image", tr, {"mode": "rollout"})),
             "model": payload(catalog.build_view("model", tr))}
    results.append({"model": "digits-vit", "tokens": tr.n, "bytes": image, "largest": max(image.values())})
    worst = max(r["largest"] for r in results)
    print(json.dumps({"bench": "app_payload", "limit_bytes": LIMIT, "worst_bytes": worst, "met": worst <= LIMIT,
                      "machine": platform.platform(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
