"""The tri-grid lookup's feature gradient by a Triton kernel (core/panohead/triplane.py ``_TriGridLookup``,
core/panohead/_trigrid_kernel.py) is PyTorch's ``grid_sampler_3d_backward``: the known answer, for points inside,
on and outside the volume, a channel count that is no power of two and the strided gradient the lookup's caller
hands back. On CUDA natively; on a CPU in Triton's interpreter, in a fresh process."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from panohead_fixtures import autograd_node_names
from triton_interpreter import failing_kernel, in_interpreter, needs_triton, rerun_in_interpreter

from idsculpt.core.panohead import triplane


def _case(p: int, c: int, d: int, h: int, w: int, m: int, dev: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(p, c, d, h, w, generator=g).to(dev)
    pts = torch.rand(p, m, 3, generator=g) * 2.4 - 1.2  # some outside [-1, 1]: their corners are dropped
    pts[:, :8] = torch.tensor([-1.0, 1.0, 0.0, 1.0 - 1.0 / w, -1.0 + 1.0 / h, 0.999, -0.999, 1.2])[:, None]
    grid = pts.reshape(p, 1, 1, m, 3).to(dev)
    # the caller reads the lookup as [P, M, C] (permute + reshape), so the gradient arrives channels-last
    grad = torch.randn(p, m, c, generator=g).to(dev).permute(0, 2, 1).reshape(p, c, 1, 1, m)
    return feats, grid, grad


def _compare(dev: torch.device) -> None:
    triplane.TRIGRID_GRAD.reset()
    assert triplane.TRIGRID_GRAD.get() is not None
    for p, c, d, h, w, m in ((3, 32, 3, 16, 12, 700), (2, 5, 1, 7, 9, 130), (1, 17, 4, 5, 6, 65)):
        feats, grid, grad = _case(p, c, d, h, w, m, dev)
        want = torch.ops.aten.grid_sampler_3d_backward(grad, feats, grid, 0, 0, False, [True, False])[0]
        got = triplane._feature_grad_kernel(feats, grid, grad)
        assert got.shape == feats.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert want.abs().sum() > 0


@needs_triton
def test_the_kernel_gradient_is_grid_sampler_3d_backward() -> None:
    if torch.cuda.is_available():
        return _compare(torch.device("cuda"))
    if not in_interpreter():
        return rerun_in_interpreter(__file__, "test_the_kernel_gradient_is_grid_sampler_3d_backward")
    return _compare(torch.device("cpu"))


@needs_triton
def test_sample_from_planes_with_the_kernel_on_gives_the_same_gradients(monkeypatch) -> None:
    """The routed lookup (kernel on) inside ``sample_from_planes`` against the plain one: the same features and
    plane gradients; the points carry no gradient, as in the inversion."""
    if not torch.cuda.is_available() and not in_interpreter():
        return rerun_in_interpreter(__file__, "test_sample_from_planes_with_the_kernel_on_gives_the_same_gradients")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    triplane.TRIGRID_GRAD.reset()
    monkeypatch.setattr(triplane.TRIGRID_GRAD, "available", lambda device: True)
    g = torch.Generator().manual_seed(3)
    planes0 = torch.randn(2, 3, 8 * 3, 10, 10, generator=g).to(dev)
    coords = (torch.rand(2, 300, 3, generator=g) - 0.5).to(dev)
    axes = triplane.generate_planes().to(dev)
    probe = torch.randn(2, 3, 300, 8, generator=g).to(dev)

    def run(on: bool):
        monkeypatch.setattr(triplane, "TRIGRID_GRAD_KERNEL", on)
        planes = planes0.clone().requires_grad_(True)
        out = triplane.sample_from_planes(axes, planes, coords, box_warp=1.0, triplane_depth=3)
        (gp,) = torch.autograd.grad((out * probe).sum(), planes)
        return out, gp

    out_on, g_on = run(True)
    out_off, g_off = run(False)
    torch.testing.assert_close(out_on.detach(), out_off.detach(), rtol=0, atol=0)
    torch.testing.assert_close(g_on, g_off, rtol=1e-5, atol=1e-5)
    assert "_TriGridLookupBackward" in autograd_node_names(out_on)


def test_a_failing_kernel_falls_back_to_pytorchs_backward(monkeypatch, caplog) -> None:
    broken = failing_kernel(monkeypatch, triplane, "TRIGRID_GRAD")
    monkeypatch.setattr(triplane, "TRIGRID_GRAD_KERNEL", True)
    feats, grid, grad = _case(2, 4, 3, 6, 6, 50, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        for routed in (True, False):  # the second call: the kernel is off, the plain lookup runs
            f = feats.clone().requires_grad_(True)
            out = triplane.trigrid_lookup(f, grid)
            assert (type(out.grad_fn).__name__ == "_TriGridLookupBackward") == routed
            (got,) = torch.autograd.grad(out, f, grad)
            want = torch.autograd.grad(F.grid_sample(f, grid, align_corners=False), f, grad)[0]
            torch.testing.assert_close(got, want)
    assert broken.calls == 1 and caplog.text.count("tri-grid feature gradient (Triton) failed") == 1


def test_the_kernel_is_on_by_default_where_it_applies(monkeypatch) -> None:
    """On since the H100 probe of 2026-12-06 (docs/PERFORMANCE.md); routed only where the kernel runs (CUDA) and only
    for a feature gradient: not without autograd, not when the points need a gradient too (the kernel gives none)."""
    name = "_TriGridLookupBackward"
    feats, grid, _ = _case(1, 4, 3, 5, 5, 20, torch.device("cpu"))
    assert triplane.TRIGRID_GRAD_KERNEL is True
    assert triplane.trigrid_lookup(feats.requires_grad_(True), grid).grad_fn.__class__.__name__ != name  # CPU: PyTorch's
    monkeypatch.setattr(triplane.TRIGRID_GRAD, "available", lambda device: True)
    assert triplane.trigrid_lookup(feats, grid).grad_fn.__class__.__name__ == name
    assert triplane.trigrid_lookup(feats, grid.clone().requires_grad_(True)).grad_fn.__class__.__name__ != name
    with torch.no_grad():
        assert triplane.trigrid_lookup(feats, grid).grad_fn is None
