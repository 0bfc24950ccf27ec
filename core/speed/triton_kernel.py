"""A Triton kernel the pack can do without: the one home of "use it where it runs, else the torch path".

Triton is missing on CPU-only torch and on Windows without triton-windows, and a present Triton can still fail
to compile for a GPU. An ``OptionalKernel`` imports its kernel module on first use (the module imports Triton
at its top, so it is never imported where nothing asks for it), answers ``available(device)`` only on CUDA,
and after its first failure (``attempt`` catches it; ``disable(error)`` reports one directly) stays off for
the process with one warning, so the run goes on with the torch path instead of failing.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, TypeVar

import torch

log = logging.getLogger("IDSculpt")
_UNLOADED = object()
T = TypeVar("T")


class OptionalKernel:
    """``load()`` returns the kernel (and may raise where Triton is missing); ``what`` names it and
    ``fallback`` what runs instead, in the one warning of a failure."""

    def __init__(self, load: Callable[[], Any], what: str, fallback: str) -> None:
        self._load, self.what, self.fallback = load, what, fallback
        self._kernel: Any = _UNLOADED
        self.off: Optional[str] = None  # why the kernel was turned off for this process (its first failure)

    def get(self) -> Any:
        """The kernel, or None where it cannot be imported (no Triton)."""
        if self._kernel is _UNLOADED:
            try:
                self._kernel = self._load()
            except Exception:  # noqa: BLE001  (no Triton: CPU-only torch, Windows without triton-windows)
                self._kernel = None
        return self._kernel

    def available(self, device: torch.device) -> bool:
        """True where the kernel can run: a CUDA device, a working Triton, no failure so far."""
        return device.type == "cuda" and self.off is None and self.get() is not None

    def disable(self, error: BaseException) -> None:
        """Turn the kernel off for this process after it failed (e.g. Triton unable to compile for this GPU)."""
        if self.off is None:
            self.off = f"{type(error).__name__}: {error}"
            log.warning("IDSculpt: the %s (Triton) failed, %s: %s", self.what, self.fallback, self.off[:300])

    def attempt(self, device: torch.device, run: Callable[[], T]) -> Optional[T]:
        """``run()`` where the kernel is available; None where it is not, or when ``run`` fails (the kernel is
        then off for the process, with one warning): the caller's torch path takes over in both cases."""
        if not self.available(device):
            return None
        try:
            return run()
        except Exception as e:  # noqa: BLE001  (Triton present but unable to compile for this GPU)
            self.disable(e)
            return None

    def reset(self) -> None:
        """Import the kernel again on next use (tests switch Triton's interpreter on in between)."""
        self._kernel = _UNLOADED
