"""Without CUDA the kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before
any kernel module is imported (triton.jit reads it when it decorates), so it is set here, before
this folder's test modules are collected."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
