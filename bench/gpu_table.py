"""Write kernels/gpu_dispatch.json from the GPU benchmark JSON in bench/results/.

  python -m bench.gpu_table [FILE ...]   # default: every bench/results/gpu_*_triton.json

Per card and variant family, FlexAttention wins when the geometric mean of time(compiled FlexAttention) /
time(Triton) over that family's rows (every N and head dim of bench/bench_triton.py) is below 1;
otherwise Triton. A family with no row that timed both keeps the fallback (kernels/gpu_table.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from kernels.gpu_table import FALLBACK, TABLE

RESULTS = Path(__file__).resolve().parent / "results"
ABOUT = ("Per GPU card and variant family (Variant.family): the faster of the Triton kernels and compiled "
         "FlexAttention, from bench/bench_triton.py's GPU JSON; regenerate with `python -m bench.gpu_table`. "
         "A card or family not listed runs the Triton kernels, guarded by the runtime self-check "
         "(kernels/gpu_table.py says why).")


def winners(report: dict) -> dict:
    """{family: {"backend", "flex_over_triton" (geometric mean of time(flex) / time(Triton)), "rows"}}."""
    ratios: dict[str, list[float]] = {}
    for name, rows in report.get("sections", {}).items():
        if name == "maps":  # the maps pass has no FlexAttention counterpart
            continue
        for row in rows:
            ratio = row.get("speedup_vs", {}).get("flex_compiled")
            if ratio:
                ratios.setdefault(row["family"], []).append(ratio)
    out = {}
    for family, values in sorted(ratios.items()):
        mean = math.exp(sum(map(math.log, values)) / len(values))
        out[family] = {"backend": "flex" if mean < 1 else "triton", "flex_over_triton": round(mean, 3),
                       "rows": len(values)}
    return out


def build(files: list[Path]) -> dict:
    cards = {}
    for path in files:
        report = json.loads(path.read_text())
        if "card" not in report:
            continue
        entry = cards.setdefault(report["card"], {"device": report.get("device"), "source": [], "families": {}})
        entry["source"].append(path.name)
        entry["families"].update(winners(report))
    return {"about": ABOUT, "fallback": FALLBACK, "cards": cards}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--table", type=Path, default=TABLE, help="where to write (default: the one dispatch reads)")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("gpu_*_triton.json"))
    table = build(files)
    args.table.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps({"written": str(args.table), "from": [p.name for p in files], "cards": list(table["cards"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
