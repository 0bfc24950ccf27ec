"""core/speed/triton_kernel.py: an optional Triton kernel is used where it runs and otherwise stays out of
the way (no Triton: unavailable; a failure: one warning, then off for the process, the torch path runs)."""
from __future__ import annotations

import logging

import torch
from triton_interpreter import failing_kernel

from idsculpt.core import sd_vae_ops
from idsculpt.core.speed.triton_kernel import OptionalKernel


def test_a_kernel_that_cannot_be_imported_is_unavailable() -> None:
    def load():
        raise ImportError("No module named 'triton'")

    k = OptionalKernel(load, "test kernel", "using torch")
    assert k.get() is None and not k.available(torch.device("cuda")) and k.off is None


def test_a_failure_turns_the_kernel_off_with_one_warning(caplog) -> None:
    k = OptionalKernel(lambda: "kernel", "test kernel", "using torch")
    assert k.get() == "kernel" and not k.available(torch.device("cpu"))  # CUDA only
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        k.disable(RuntimeError("PTX compilation failed"))
        k.disable(RuntimeError("again"))
    assert k.off == "RuntimeError: PTX compilation failed" and not k.available(torch.device("cuda"))
    assert caplog.text.count("the test kernel (Triton) failed, using torch") == 1 and "again" not in caplog.text


def test_attempt_runs_where_available_and_turns_off_at_the_first_failure(monkeypatch, caplog) -> None:
    k = OptionalKernel(lambda: "kernel", "test kernel", "using torch")
    calls: list[int] = []

    def run(fail: bool):
        def go() -> str:
            calls.append(1)
            if fail:
                raise RuntimeError("PTX compilation failed")
            return "fast"
        return go

    assert k.attempt(torch.device("cpu"), run(False)) is None and calls == []  # not available: never run
    monkeypatch.setattr(k, "available", lambda device: k.off is None)
    assert k.attempt(torch.device("cuda"), run(False)) == "fast"
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        assert k.attempt(torch.device("cuda"), run(True)) is None
        assert k.attempt(torch.device("cuda"), run(False)) is None  # off for the process: not run again
    assert len(calls) == 2 and k.off == "RuntimeError: PTX compilation failed"
    assert caplog.text.count("the test kernel (Triton) failed, using torch") == 1


def test_a_failing_fused_group_norm_backward_falls_back_to_the_native_kernels(monkeypatch, caplog) -> None:
    """The lean GroupNorm + SiLU backward with a kernel that fails to launch: the same gradient as the
    native recomputation, one warning, and the kernel is not tried again."""
    broken = failing_kernel(monkeypatch, sd_vae_ops, "FUSED_BACKWARD")
    norm = torch.nn.GroupNorm(4, 16).requires_grad_(False)
    x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    want = torch.autograd.grad(torch.nn.functional.silu(norm(x.requires_grad_(True))).square().sum(), x)[0]
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        for _ in range(2):
            xi = x.detach().requires_grad_(True)
            got = torch.autograd.grad(sd_vae_ops.group_norm_silu(xi, norm).square().sum(), xi)[0]
            assert torch.allclose(got, want, atol=1e-6)
    assert broken.calls == 1 and caplog.text.count("fused GroupNorm backward (Triton) failed") == 1
