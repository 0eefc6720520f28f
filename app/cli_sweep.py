"""`attnscope sweep` and `attnscope heads`: the quality lens on the command line.

    attnscope sweep --model M --variants V1 V2 ... [--inputs FILE] [--limit N] [--json]
    attnscope heads --model M [--top K] [--json]

Variants take the grid syntax of analysis/quality.py: `sliding_window:w=32|64,sinks=0|4` is four
points. app/cli.py calls `register(subparsers)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app import cli_args

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def register(sub) -> None:
    s = sub.add_parser("sweep", help="measure what attention variants do to a model (quality lens)")
    s.add_argument("--model", required=True, help="preset, local folder, .gguf file, timm name or hub id")
    s.add_argument("--variants", nargs="+", required=True,
                   help="variant specs; a|b|c in a value makes a grid, e.g. sliding_window:w=32|64,sinks=0|4")
    s.add_argument("--inputs", help="a text file (LM: read whole; encoder: one input per paragraph), or an image "
                                    "or folder of images (ViT). Default: the shipped text / the digits test split")
    s.add_argument("--limit", type=int, help="use at most N inputs (paragraphs, images)")
    s.add_argument("--max-tokens", type=int, help="truncate each text input to this many tokens")
    s.add_argument("--kl-rows", type=int, default=128, help="query rows per input for the attention KL")
    s.add_argument("--layers", help="comma-separated layers the variants apply to (default: all)")
    s.add_argument("--no-attention", action="store_true", help="skip sparsity and attention KL (faster)")
    s.add_argument("--per-head", action="store_true", help="add the (layer × head) KL and sparsity to each row")
    s.add_argument("--json", action="store_true", help="print the table as JSON")
    s.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("heads", help="head types: previous-token, induction, sink, local/global heads")
    s.add_argument("--model", required=True, help="preset, local folder, .gguf file, timm name or hub id")
    s.add_argument("--top", type=int, default=5, help="heads listed per type")
    s.add_argument("--text-file", help="natural text for the previous-token, sink and distance scores")
    s.add_argument("--length", type=int, default=64, help="random tokens per copy for the induction score")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print scores, types and top heads as JSON")
    s.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
    s.set_defaults(func=cmd_heads)


def _say(msg: str) -> None:
    print(f"attnscope: {msg}", file=sys.stderr)


def _load(args):
    from models.registry import load

    if args.trust_remote_code:
        _say("warning: --trust-remote-code runs code downloaded with the model")
    return load(args.model, trust_remote_code=args.trust_remote_code, progress=_say)


def _layers(raw: str | None, n_layers: int) -> list[int] | None:
    layers = cli_args.indices("--layers", raw)
    if layers is not None and max(layers) >= n_layers:
        raise cli_args.CliError(f"--layers {raw!r}: layers run 0..{n_layers - 1}")
    return layers


def _batches(lm, args):
    from analysis import quality
    from models.inputs import read_image, read_text_file
    from models.loaded import InputError

    if args.inputs is None:
        return quality.default_batches(lm, limit=args.limit, max_tokens=args.max_tokens)
    path = Path(args.inputs)
    if lm.kind != "vit":
        return quality.text_batches(lm, read_text_file(path), limit=args.limit, max_tokens=args.max_tokens)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return quality.image_batches(lm, [read_image(f)[0] for f in files], limit=args.limit)


def cmd_sweep(args) -> int:
    from analysis.quality import expand_specs, sweep
    from app.cli_progress import Bar

    cli_args.budget()
    cli_args.positive("--limit", args.limit)
    cli_args.positive("--max-tokens", args.max_tokens)
    cli_args.positive("--kl-rows", args.kl_rows)
    cli_args.indices("--layers", args.layers)
    for spec in expand_specs(args.variants):  # fail on a bad spec before loading the model
        cli_args.variant(spec, args.model)
    lm = _load(args)
    result = sweep(lm, args.variants, batches=_batches(lm, args), kl_rows=args.kl_rows,
                   layers=_layers(args.layers, lm.n_layers), attention=not args.no_attention, progress=_say,
                   step=Bar("sweep", "forward passes"))
    table = result.table(per_head=args.per_head)
    if args.json:
        print(json.dumps(table, indent=1))
    else:
        print(format_table(table))
    return 0


def format_table(rows: list[dict]) -> str:
    """The sweep table for a terminal: one line per variant point."""
    metric = rows[0]["metric"] if rows else None
    cols = [("variant", "variant", "{}"), ("sparsity", "kept", "{:.3f}"), ("attn_kl", "attn KL", "{:.3f}"),
            ("attn_mass_lost", "mass lost", "{:.3f}"), ("output_kl", "out KL", "{:.4f}"),
            ("top1_agreement", "top-1", "{:.3f}"), ("value", metric or "metric", "{:.4f}"), ("seconds", "s", "{:.1f}")]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else f.format(r[k])) for k, _, f in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    if rows:
        lines.append(f"({rows[0]['model']}, {rows[0]['n_inputs']} inputs, {rows[0]['n_tokens']} tokens)")
    return "\n".join(lines)


def cmd_heads(args) -> int:
    from analysis.head_types import RANKINGS, head_scores
    from models.inputs import read_text_file

    cli_args.budget()
    cli_args.positive("--top", args.top)
    cli_args.positive("--length", args.length)
    text = read_text_file(Path(args.text_file)) if args.text_file else None
    lm = _load(args)
    scores = head_scores(lm, text=text, length=args.length, seed=args.seed)
    if args.json:
        print(json.dumps(scores.to_json(args.top), indent=1))
        return 0
    print(f"{lm.model_id}: top {args.top} heads per type (layer.head score)")
    for ranking in RANKINGS:
        top = scores.top(ranking, args.top)
        listed = "  ".join(f"L{h['layer']}.H{h['head']} {h['score']:.3f}" for h in top) or "(does not apply)"
        print(f"  {ranking:15} {listed}")
    return 0

