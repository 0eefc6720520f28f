"""A long trace of a random-initialised model of SmolLM2-135M's shape, every layer's maps (JSON out).

  python -m bench.gpu_trace --tokens 32768 --out DIR   # on a GPU: DIR/gpu_<card>_trace32k.json
  python -m bench.gpu_trace --tokens 64                # no GPU: the same code path on CPU, small

The weights are random (the preset's GGUF is too large to carry to a GPU machine and no hub is reached),
so the maps mean nothing; what is measured is the trace's time against the plain forward of the same
model in the same process, the peak GPU memory, and that every layer recorded finite maps of the right
shape. The tokenizer is a word-level one built in memory: one token per word, no special tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# the shape of the smollm2-135m preset's config.json (HuggingFaceTB/SmolLM2-135M-Instruct)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
                    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True,
                    hidden_act="silu", max_position_embeddings=8192)
WORDS = ("the quick brown fox jumps over a lazy dog while attention heads look back at every token "
         "seen so far in this long random text").split()


def random_smollm2(tokens: int, device: str):
    """The model (bf16 on CUDA, float32 on CPU) and a word-level tokenizer over WORDS."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(**{**SMOLLM2_135M, "max_position_embeddings": max(tokens, 8192)})
    model = tf.LlamaForCausalLM(cfg).eval()
    model = model.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return model, tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def run(tokens: int) -> dict:
    import numpy as np
    import torch

    from kernels.gpu_table import card_slug
    from models.attach import attached
    from models.tracer import encode, trace

    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    model, tokenizer = random_smollm2(tokens, device)
    text = " ".join(WORDS[i % len(WORDS)] for i in range(tokens))
    with attached(model, tokenizer=tokenizer) as lm:
        enc = encode(lm, text=text, max_tokens=tokens)
        lm.forward(enc)  # warm-up: kernels compiled and tuned outside the timings
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        lm.forward(enc)
        sync()
        forward_s = time.perf_counter() - t0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        tr = trace(lm, text=text, max_tokens=tokens)
        sync()
        trace_s = time.perf_counter() - t0
    maps = [tr.attention_map(layer) for layer in range(tr.n_layers)]
    return {
        "bench": "trace_random_smollm2", "device": card, "card": card_slug(card), "torch": torch.__version__,
        "model": "random-initialised LlamaForCausalLM of smollm2-135m's shape", "dtype": str(model.dtype),
        "tokens": tr.n, "layers": tr.n_layers, "heads": tr.n_heads, "variant": tr.variant,
        "forward_s": round(forward_s, 3), "trace_s": round(trace_s, 3),
        "trace_over_forward": round(trace_s / forward_s, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "layers_with_maps": sum(m.size > 0 for m in maps), "map_shape": list(maps[0].shape),
        "maps_finite": bool(all(np.isfinite(m).all() for m in maps)),
        "lse_finite": bool(all(np.isfinite(tr.lse(layer)).all() for layer in range(tr.n_layers))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--out", type=Path, default=None, help="folder for <gpu_<card>|cpu>_trace<N>.json")
    args = parser.parse_args(argv)
    report = run(args.tokens)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        size = f"{args.tokens // 1024}k" if args.tokens >= 1024 else str(args.tokens)
        prefix = "cpu" if report["card"] == "cpu" else f"gpu_{report['card']}"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{prefix}_trace{size}.json").write_text(text + "\n")
    ok = report["layers_with_maps"] == report["layers"] and report["maps_finite"] and report["lse_finite"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
