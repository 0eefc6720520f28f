"""`attnscope` command line: the same functions the app uses, one clear line on any error."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

from app import cli_args
from app.cli_args import CliError
from kernels.errors import user_message

EXIT_USAGE = 2
__all__ = ["CliError", "main"]


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and turn every error phrased for the user into one line and exit status 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv[:1] if argv[:1] == ["app"] else argv)
    if argv[:1] == ["app"]:  # all of it Streamlit's: argparse's REMAINDER refuses one starting with --flag
        args.streamlit_args = argv[1:]
    try:
        with _terminate_as_exit():
            return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        msg = user_message(exc)
        if msg is None:
            raise
        print(f"attnscope: error: {msg}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (a `kill`, a timeout) ends the command through SystemExit, so half-written outputs are
    removed by the writers' own clean-up instead of being left behind (models.atomic)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parser() -> argparse.ArgumentParser:
    from app import cli_sweep

    p = argparse.ArgumentParser(prog="attnscope", description="An attention microscope for transformers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the embedded presets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("variants", help="list the attention variants")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_variants)

    s = sub.add_parser("trace", help="run a model on one input and save the trace folder")
    _model_input_args(s)
    s.add_argument("--qk", action="store_true", help="also keep q and k (after rotary) per layer")
    s.add_argument("--layers", help="comma-separated layers the variant applies to (default: all)")
    s.add_argument("--heads", help="comma-separated heads the variant applies to (default: all)")
    s.add_argument("--dense-limit", type=int, default=1024, help="keep N×N probabilities up to this many tokens")
    s.add_argument("--max-tokens", type=int, help="keep only the first N tokens of the text (says how many dropped)")
    s.add_argument("--out", required=True, help="trace folder to write")
    s.add_argument("--force", action="store_true", help="replace an existing trace folder")
    s.set_defaults(func=cmd_trace)

    _export_parsers(sub)
    cli_sweep.register(sub)

    s = sub.add_parser("bench", help="run a benchmark of bench/ (JSON on stdout)")
    s.add_argument("which", choices=sorted(BENCHES), help="which benchmark")
    s.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("app", help="serve the Streamlit app (Streamlit options and env vars apply)")
    s.add_argument("streamlit_args", nargs=argparse.REMAINDER, help="passed to `streamlit run`")
    s.set_defaults(func=cmd_app)
    return p


def _model_input_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", required=True, help="preset, local folder, .gguf file, timm name or hub id")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--text-file")
    g.add_argument("--image")
    s.add_argument("--variant", default="full", help="name or name:param=value,...")
    s.add_argument(
        "--trust-remote-code", action="store_true", help="run code shipped with a hub model (off by default)"
    )
    s.add_argument(
        "--allow-pickle", action="store_true", help="accept pickle weights (.bin), which can run code when loaded"
    )


def read_input(args) -> dict:
    """--text / --text-file / --image → keyword arguments for the tracer."""
    from models.inputs import check_text, read_image, read_text_file

    if args.text is not None:
        return {"text": check_text(args.text, "--text")}
    if args.text_file is not None:
        return {"text": check_text(read_text_file(Path(args.text_file)), f"--text-file {args.text_file}")}
    image, name = read_image(Path(args.image))
    return {"image": image, "image_name": name}


def _load(args):
    from models.registry import load

    if args.trust_remote_code:
        print("attnscope: warning: --trust-remote-code runs code downloaded with the model", file=sys.stderr)
    return load(
        args.model,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=getattr(args, "allow_pickle", False),
        progress=lambda m: print(f"attnscope: {m}", file=sys.stderr),
    )


def cmd_models(args) -> int:
    from models.registry import describe_presets

    presets = describe_presets()
    if args.json:
        print(json.dumps(presets, indent=1))
    else:
        for p in presets:
            print(f"{p['name']:14} {p['kind']:14} {p['description']}")
        print("\nAlso: any transformers model id or local folder, timm ViT names, .gguf files.")
    return 0


def cmd_variants(args) -> int:
    from kernels.variants import all_variants

    table = [v.describe() for v in all_variants()]
    if args.json:
        print(json.dumps(table, indent=1, default=str))
    else:
        for v in table:
            params = ", ".join(f"{p['name']}={p['default']}" for p in v["params"]) or "-"
            print(f"{v['name']:18} {v['family']:14} {'/'.join(v['applies_to']):28} {params}")
    return 0


def cmd_trace(args) -> int:
    from app.cli_progress import Bar
    from models.tracer import trace

    cli_args.output(args.out, args.force)
    cli_args.trace_request(args)
    inputs = read_input(args)
    lm = _load(args)
    tr = trace(
        lm,
        variant=args.variant,
        qk=args.qk,
        layers=cli_args.indices("--layers", args.layers),
        heads=cli_args.indices("--heads", args.heads),
        dense_limit=args.dense_limit,
        max_tokens=args.max_tokens,
        progress=Bar("trace", "layers"),
        **inputs,
    )
    out = tr.save(args.out, force=args.force)
    for note in tr.notes:
        print(f"attnscope: note: {note}", file=sys.stderr)
    print(f"wrote {out}/manifest.json and {out}/trace.npz ({tr.n} tokens, {tr.n_layers} layers × {tr.n_heads} heads)")
    return 0


def _export_parsers(sub) -> None:
    from app.views.catalog import VIEWS

    formats = ("png", "svg", "pdf", "html", "json")
    s = sub.add_parser("export", help="trace an input and write a view as PNG, SVG, PDF or HTML, with its data")
    _model_input_args(s)
    s.add_argument("--view", choices=VIEWS, help="the view to export (or --all)")
    s.add_argument("--all", action="store_true", help="every view that applies, every format, into the --out folder")
    s.add_argument("--variant-b", help="the second variant of the compare view (default: full vs --variant)")
    _selection_args(s)
    s.add_argument("--format", choices=formats, help="default: the --out suffix (with --all: png, svg, pdf, html)")
    s.add_argument("--out", required=True, help="file to write (with --all: a folder); data goes to <stem>.data/")
    s.add_argument("--no-data", action="store_true", help="write the figure only, not the data that rebuilds it")
    s.add_argument("--force", action="store_true", help="overwrite existing files")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("render", help="rebuild an exported figure from its saved data (no model is loaded)")
    s.add_argument("path", metavar="DIR_OR_MANIFEST", help="a .data folder, its view.json or manifest.json, or a zip")
    s.add_argument("--view", choices=VIEWS, help="the view to draw (required for a plain trace folder)")
    _selection_args(s)
    s.add_argument("--format", choices=formats, help="default: the --out suffix")
    s.add_argument("--out", required=True, help="file to write")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.set_defaults(func=cmd_render)


def _selection_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--layer", type=int)
    s.add_argument("--head", type=int)
    s.add_argument("--query", help="query token index; for the image view also cls or row,col")
    s.add_argument("--metric", help="metrics view: entropy, distance, sink or previous_token")


def cmd_export(args) -> int:
    from app import export

    selection = export.cli_selection(args)
    cli_args.trace_request(args)
    inputs = read_input(args)
    if args.view is None and not args.all:
        raise export.ExportError("say which view to export with --view (or export every view with --all)")
    paths = export.run_export(
        lambda: _load(args), inputs, variant=args.variant, variant_b=args.variant_b, view=args.view,
        selection=selection, out=args.out, fmt=args.format, all_views=args.all, force=args.force,
        with_data=not args.no_data, say=lambda m: print(f"attnscope: {m}", file=sys.stderr),
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_render(args) -> int:
    from app import export

    out = export.render(args.path, args.out, args.format, view=args.view, selection=export.cli_selection(args),
                        force=args.force)
    print(f"wrote {out}")
    return 0


BENCHES = {
    "load": ("bench.bench_load", []),  # preset load and trace times
    "model": ("bench.bench_cpu", ["model"]),  # smollm2 trace vs eager vs SDPA: time and peak RSS
    "variants": ("bench.bench_cpu", ["variants"]),  # attention time of every variant vs SDPA
    "render": ("bench.bench_render", []),  # app re-render time
    "qk": ("bench.bench_qk_embed", []),  # UMAP/PCA on 20 000 points
    "export": ("bench.bench_export", []),  # every view in every format
    "triton": ("bench.bench_triton", []),  # GPU kernels vs SDPA flash and FlexAttention
    "memory": ("bench.bench_memory", []),  # peak RSS of traces against the memory guard's estimate
    "payload": ("bench.bench_payload", []),  # bytes each view sends to the browser at N = 128, 1024, 8192
    "firstplot": ("bench.bench_first_plot", []),  # server start to the first plot in Chromium
}


def cmd_bench(args) -> int:
    import runpy

    module, extra = BENCHES[args.which]
    sys.argv = [module, *extra, *args.bench_args]
    runpy.run_module(module, run_name="__main__")
    return 0


def cmd_app(args) -> int:
    from streamlit.web import cli as stcli

    main_py = Path(__file__).resolve().parent / "main.py"
    # Our defaults go first so the user's own flags (later on the line) win; an env var set for one skips it.
    from app.session import MAX_UPLOAD_MB

    defaults = []
    for flag, env, value in (
        ("--client.toolbarMode", "STREAMLIT_CLIENT_TOOLBAR_MODE", "viewer"),
        ("--browser.gatherUsageStats", "STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false"),
        # the server's own limit: the upload widgets' check runs in the browser, which a request can skip
        ("--server.maxUploadSize", "STREAMLIT_SERVER_MAX_UPLOAD_SIZE", str(MAX_UPLOAD_MB)),
    ):
        if env not in os.environ:
            defaults += [flag, value]
    sys.argv = ["streamlit", "run", str(main_py), *defaults, *args.streamlit_args]
    return stcli.main()


if __name__ == "__main__":
    sys.exit(main())
