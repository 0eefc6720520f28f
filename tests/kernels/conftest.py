"""Kernel tests: without a GPU the Triton kernels run under Triton's interpreter.

TRITON_INTERPRET is read when a kernel is decorated, so it is set here, before any test module
of this folder imports kernels.triton.*; with CUDA the kernels compile for the GPU as usual.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
