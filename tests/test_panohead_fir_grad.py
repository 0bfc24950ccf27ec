"""The FIR filters' own input gradient (core/panohead/ops.py ``_FirCorrelation``) is the true gradient.

It replaces autograd's convolution data-gradient with a forward correlation of the padded gradient and the
flipped kernel (issue 22: the cuDNN data-gradient of a 1->1 channel convolution is the slow kernel of a
PanoHead inversion step). Known answers: float64 finite differences (gradcheck), and plain autograd through
``F.conv2d`` for the resampling ops the generator uses, with asymmetric filters (StyleGAN's [1,3,3,1] is
symmetric, so a missing flip would pass with it alone)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from panohead_fixtures import autograd_node_names

from idsculpt.core.panohead import ops


def _plain(monkeypatch):
    """ops with the custom gradient swapped for autograd's own through F.conv2d."""
    monkeypatch.setattr(ops, "_fir", lambda x, k: F.conv2d(x, k))


@pytest.mark.parametrize("kshape", [(4, 4), (3, 5), (1, 4), (4, 1)])
def test_fir_gradient_is_the_finite_difference_gradient(kshape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 9, 11, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 1, *kshape, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda t: ops._FirCorrelation.apply(t, k), (x,))


@pytest.mark.parametrize("case", ["upsample2d", "filter_pad", "down", "crop", "separable"])
def test_resampling_gradients_equal_autograd_of_the_plain_convolution(case, monkeypatch):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 5, 12, 10, generator=g)
    f = ops.setup_filter([1.0, 2.0, 4.0, 3.0])  # asymmetric: a flip matters
    if case == "upsample2d":
        def run(t):
            return ops.upsample2d(t, f)
    elif case == "filter_pad":  # conv2d_resample's up path: the FIR after the transposed convolution
        def run(t):
            return ops.upfirdn2d(t, f, padding=[2, 1, 2, 1], gain=4)
    elif case == "down":
        def run(t):
            return ops.upfirdn2d(t, f, down=2, padding=[1, 1, 1, 1])
    elif case == "crop":
        def run(t):
            return ops.upfirdn2d(t, f, up=2, padding=[-1, 2, 0, -2], flip_filter=True)
    else:
        fs = ops.setup_filter([1.0, 2.0, 3.0, 5.0, 3.0, 2.0, 1.0, 0.5])  # >= 8 taps: the separable form
        assert fs.ndim == 1

        def run(t):
            return ops.upfirdn2d(t, fs, up=2, padding=[4, 3, 4, 3])
    w = torch.randn_like(run(x0))
    x = x0.clone().requires_grad_(True)
    out = run(x)
    (gx,) = torch.autograd.grad((out * w).sum(), x)
    _plain(monkeypatch)
    xr = x0.clone().requires_grad_(True)
    outr = run(xr)
    (gr,) = torch.autograd.grad((outr * w).sum(), xr)
    torch.testing.assert_close(out, outr, rtol=0, atol=0)
    torch.testing.assert_close(gx, gr, rtol=1e-5, atol=1e-6)


def test_modulated_upsampling_layer_gradient_equals_autograd(monkeypatch):
    """The generator's upsampling modulated convolution (transposed conv + FIR), weight gradient included."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 6, 8, 8, generator=g)
    w0 = torch.randn(4, 6, 3, 3, generator=g)
    styles = torch.rand(2, 6, generator=g) + 0.5
    f = ops.setup_filter([1, 3, 3, 1])

    def grads():
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        out = ops.modulated_conv2d(x, w, styles, up=2, padding=1, resample_filter=f, flip_weight=False)
        return torch.autograd.grad(out.square().sum(), (x, w))

    gx, gw = grads()
    _plain(monkeypatch)
    rx, rw = grads()
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-5)


def test_the_filter_uses_its_own_gradient_only_when_one_is_needed():
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1])
    with torch.no_grad():
        assert ops.upsample2d(x, f).grad_fn is None
    names = autograd_node_names(ops.upsample2d(x, f))
    assert "_FirCorrelationBackward" in names and "ConvolutionBackward0" not in names
