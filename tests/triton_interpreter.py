"""Testing the pack's Triton kernels: on a machine without CUDA through Triton's interpreter (TRITON_INTERPRET=1),
and their fallback through a kernel that fails to launch (``failing_kernel``).

The interpreter must be switched on before Triton is first imported, and other packages may import it
early, so a test that needs it re-runs itself in a fresh process:

    @needs_triton
    def test_x():
        if not torch.cuda.is_available() and not in_interpreter():
            return rerun_in_interpreter(__file__, "test_x")
        ...
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


def in_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def rerun_in_interpreter(test_file: str, test_name: str, timeout: int = 600) -> None:
    """Run ``test_file::test_name`` in a fresh pytest process with the interpreter on; assert it passed."""
    test = f"{os.path.abspath(test_file)}::{test_name}"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                       env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and "1 passed" in r.stdout, (r.stdout[-3000:], r.stderr[-2000:])


class _BrokenLauncher:
    """What ``OptionalKernel.get()`` returns for a kernel that fails to compile: indexing by a launch grid
    gives a launch that raises (and counts)."""

    def __init__(self) -> None:
        self.calls = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls += 1
            raise RuntimeError("PTX compilation failed")
        return launch


def failing_kernel(monkeypatch, module, attr: str) -> _BrokenLauncher:
    """Replace ``module.attr`` (an OptionalKernel) by one whose launches fail, available on any device until its
    first failure turns it off; returns the launcher, whose ``calls`` counts the tries."""
    from idsculpt.core.speed.triton_kernel import OptionalKernel

    old = getattr(module, attr)
    broken = _BrokenLauncher()
    kernel = OptionalKernel(lambda: broken, old.what, old.fallback)
    monkeypatch.setattr(kernel, "available", lambda device: kernel.off is None)
    monkeypatch.setattr(module, attr, kernel)
    return broken
