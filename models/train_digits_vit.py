"""Train the embedded `digits-vit` preset on scikit-learn's 8x8 digits.

    python -m models.train_digits_vit [--out models/digits_vit] [--epochs N] [--seed S]

A tiny ViT (8x8 grid of 4x4 patches + CLS = 65 tokens) so its attention is
small enough to inspect head by head. CPU-only, deterministic, a couple of
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTForImageClassification

from models.digits_data import IMAGE_SIZE, PATCH_SIZE, load_digits_split, to_pixel_values

DEFAULT_OUT = Path(__file__).resolve().parent / "digits_vit"


def build_config() -> ViTConfig:
    return ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,  # keep attention maps un-noised
        qkv_bias=True,
        num_labels=10,
        id2label={i: str(i) for i in range(10)},
        label2id={str(i): i for i in range(10)},
    )


def random_shift(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each (8, 8) image by -1..1 pixels per axis, filling with background.

    Digits in the dataset are centred but not perfectly; small shifts are the
    cheapest augmentation that doesn't change the class.
    """
    n, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None]
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols]


def augment(images: torch.Tensor, gen: torch.Generator, noise: float) -> torch.Tensor:
    out = random_shift(images, gen)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=gen)
    return out.clamp(0.0, 1.0)


@torch.no_grad()
def init_sincos_positions(model: ViTForImageClassification) -> None:
    """Start position embeddings from a 2D sin-cos grid (they stay learnable).

    Each token carries a single pixel value, so *where* it is matters a lot;
    the default tiny random init makes the model spend most of training
    discovering the grid.
    """
    emb = model.vit.embeddings.position_embeddings  # (1, 1 + g*g, d)
    d = emb.shape[-1]
    g = IMAGE_SIZE // PATCH_SIZE
    omega = 1.0 / 100.0 ** (torch.arange(d // 4, dtype=torch.float32) / (d // 4))
    coords = torch.arange(g, dtype=torch.float32)[:, None] * omega[None]  # (g, d/4)
    axis = torch.cat([coords.sin(), coords.cos()], dim=1)  # (g, d/2)
    rows = axis[:, None, :].expand(g, g, d // 2)
    cols = axis[None, :, :].expand(g, g, d // 2)
    grid = torch.cat([rows, cols], dim=-1).reshape(g * g, d)
    emb[0, 1:] = grid
    emb[0, 0] = 0.0


@torch.no_grad()
def evaluate(model: ViTForImageClassification, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    logits = model(pixel_values=to_pixel_values(x)).logits
    return float((logits.argmax(-1).numpy() == y).mean())


def train(out: Path, epochs: int, seed: int, batch_size: int, lr: float, noise: float) -> dict:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)

    x_train, y_train, x_test, y_test = load_digits_split(seed=0)  # split fixed
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)

    # Eager attention: deterministic on CPU and what the app uses to read maps.
    model = ViTForImageClassification(build_config())
    model.config._attn_implementation = "eager"
    init_sincos_positions(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(xt) / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch * 2

    def lr_factor(step: int) -> float:
        # Linear warmup then cosine decay to zero: stable for small ViTs.
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        running = 0.0
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            pixels = to_pixel_values(augment(xt[idx], gen, noise).numpy())
            logits = model(pixel_values=pixels).logits
            loss = F.cross_entropy(logits, yt[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            acc = evaluate(model, x_test, y_test)
            print(f"epoch {epoch + 1:3d}  loss {running / len(xt):.4f}  test acc {acc:.4f}")
    train_seconds = time.perf_counter() - start

    acc = evaluate(model, x_test, y_test)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    metrics = {
        "test_accuracy": round(acc, 4),
        "train_size": len(x_train),
        "test_size": len(x_test),
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    metrics = train(args.out, args.epochs, args.seed, args.batch_size, args.lr, args.noise)
    print(f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['train_seconds']}s)")


if __name__ == "__main__":
    main()
