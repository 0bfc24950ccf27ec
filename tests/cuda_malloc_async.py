"""Re-run one test in a fresh process under the cudaMallocAsync allocator (ComfyUI's default), which
must be chosen before CUDA starts: that is how the CUDA tests check behaviour under both allocators."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def rerun_under_cuda_malloc_async(test_file: str, test_name: str, timeout: int = 600) -> None:
    """Run ``test_file::test_name`` with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync; fail with its output."""
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "").replace(" ", "") == "backend:cudaMallocAsync":
        pytest.skip("already running under cudaMallocAsync: the test itself is this check")
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF="backend:cudaMallocAsync")
    test = f"{os.path.abspath(test_file)}::{test_name}"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-2000:])
