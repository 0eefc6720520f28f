"""Server-side re-render time of the app with a trace cached (JSON on stdout).

Drives the real app script with Streamlit's AppTest: one run to load and trace, then times the
reruns a user triggers by changing layer or head, or by switching page. Target: ≤ 150 ms for N ≤ 512.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAIN = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
PAGES = ["pages/model_view.py", "pages/head_view.py", "pages/neuron_view.py", "pages/compare.py",
         "pages/head_metrics.py", "pages/mask_lab.py"]


def timed_runs(at, action, repeats: int = 5) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        action(i).run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    return statistics.median(times)


def main() -> None:
    from streamlit.testing.v1 import AppTest

    from app.examples import TEXT_EXAMPLES

    at = AppTest.from_file(MAIN, default_timeout=600)
    text = " ".join([TEXT_EXAMPLES["Repeated phrase"]] * 6)  # ~250 tokens
    at.session_state["text_Sentence"] = text  # AppTest re-runs pages only, so the sidebar is set up front
    at.run()
    tokens = at.session_state["selection"].text
    rows = []
    for page in PAGES:
        at.switch_page(page).run()  # first visit computes what the page caches (trace is shared)
        at.switch_page(page).run()
        opened = timed_runs(at, lambda i, p=page: at.switch_page(p))
        rows.append({"action": f"open {page}", "seconds": round(opened, 4)})
        key = page.split("/")[1].split("_")[0].replace(".py", "")
        layer_keys = [w.key for w in at.number_input if w.key and w.key.endswith("_layer")]
        if layer_keys:
            k = layer_keys[0]
            rows.append({"action": f"{key}: change layer", "seconds": round(
                timed_runs(at, lambda i, k=k: at.number_input(key=k).set_value(i % 6)), 4)})
            hk = k.replace("_layer", "_head")
            rows.append({"action": f"{key}: change head", "seconds": round(
                timed_runs(at, lambda i, hk=hk: at.number_input(key=hk).set_value(i % 12)), 4)})
    from app.session import get_model

    assert tokens == text
    n_tokens = len(get_model("minilm").encode_text(text).tokens)
    worst = max(r["seconds"] for r in rows)
    print(json.dumps({"bench": "app_rerender", "model": "minilm", "tokens": n_tokens, "results": rows,
                      "worst_seconds": worst, "target_seconds": 0.15, "met": worst <= 0.15}, indent=1))


if __name__ == "__main__":
    main()
