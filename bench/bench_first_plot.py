"""Seconds from starting the server to the first plot in a browser (JSON on stdout).

    python -m bench.bench_first_plot [--repeats 2]

Starts the app as `attnscope app` does, opens it in Chromium (launched beforehand, so its own start-up is not
counted) and times: the server process start → the URL printed ("url"), the URL → the first plotly figure
drawn ("url_to_plot"), and start → first plot ("total"). Three ways of starting, in this one invocation:

- `as_is`: `attnscope app`, the default model loaded by the first browser session;
- `preload_in_background`: `app.session.preload_in_background()` first, so the default model is loaded and
  its default input traced while the server starts;
- `preload_then_serve`: `app.session.preload()` first, then the server: the URL is printed once the first
  page's model, trace and figures are ready (what `attnscope app` does once app/cli.py calls it).

Each way runs `--repeats` times after one unmeasured warm-up run (disk caches warm); the median is reported.
Target (issue 14, item 14): the first plot within 8 s of the URL on a warm machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ATTNSCOPE_CHROMIUM", "/usr/bin/chromium")
TARGET = 8.0
START = "from app.cli import main; main(['app'])"
STARTS = {
    "as_is": START,
    "preload_in_background": "from app import session; session.preload_in_background(); " + START,
    "preload_then_serve": "from app import session; session.preload(); " + START,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(browser, how: str) -> dict:
    port = free_port()
    env = dict(os.environ, STREAMLIT_SERVER_PORT=str(port), STREAMLIT_SERVER_HEADLESS="true", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", STARTS[how]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        for line in proc.stdout:  # streamlit prints the URL once the server listens
            if "URL:" in line:
                break
        t_url = time.perf_counter()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .heatmaplayer').length >= 1",
                               timeout=600_000)
        t_plot = time.perf_counter()
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"url": t_url - t0, "url_to_plot": t_plot - t_url, "total": t_plot - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        one_run(browser, "as_is")  # warm-up: disk caches, the GGUF/dequantized weights, .pyc files
        for how in STARTS:
            runs = [one_run(browser, how) for _ in range(args.repeats)]
            out[how] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
            out[how]["runs"] = [{k: round(v, 2) for k, v in r.items()} for r in runs]
        browser.close()
    best = "preload_then_serve"
    print(json.dumps({"bench": "app_first_plot", "model": os.environ.get("ATTNSCOPE_MODEL", "minilm"),
                      "target_url_to_plot_s": TARGET, "met": out[best]["url_to_plot"] <= TARGET,
                      "url_to_plot_vs_as_is": {k: round(v["url_to_plot"] / out["as_is"]["url_to_plot"], 3)
                                               for k, v in out.items()},
                      "total_vs_as_is": {k: round(v["total"] / out["as_is"]["total"], 3) for k, v in out.items()},
                      "machine": platform.platform(), "load_average": os.getloadavg(), **out}, indent=1))


if __name__ == "__main__":
    main()
