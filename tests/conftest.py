"""Shared fixtures: offline mode, the embedded presets (loaded once), tiny random-config models."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm():
    from models.registry import load

    return load("minilm")


@pytest.fixture(scope="session")
def smollm():
    from models.registry import load

    return load("smollm2-135m")


@pytest.fixture(scope="session")
def digits_vit():
    from models.registry import load

    return load("digits-vit")


@pytest.fixture(scope="session")
def tokenizer(minilm):
    """A real WordPiece tokenizer (vocab 30522) for the tiny random text models."""
    return minilm.adapter.tokenizer
