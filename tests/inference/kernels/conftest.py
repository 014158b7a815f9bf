"""Without CUDA the kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before
any kernel module is imported (triton.jit reads it when it decorates), so it is set here, before
this folder's test modules are collected.

The nvcc compile checks (tests marked ``nvcc_job(key)``, nvcc_jobs.py) start in the background once
collection is done, and their tests run last, so the compiles overlap the rest of the suite."""

import os

import nvcc_jobs
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: only the selected tests' jobs start
def pytest_collection_modifyitems(config, items):
    late = [it for it in items if it.get_closest_marker("nvcc_job")]
    if not late or config.option.collectonly:
        return
    items[:] = [it for it in items if not it.get_closest_marker("nvcc_job")] + late
    keys = [it.get_closest_marker("nvcc_job").args[0] for it in late]
    nvcc_jobs.start([k for k in dict.fromkeys(keys) if k in nvcc_jobs.JOBS])
