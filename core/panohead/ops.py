"""Pure-torch versions of the StyleGAN2 custom ops PanoHead uses (no CUDA build needed).

StyleGAN2/EG3D/PanoHead ship CUDA kernels for ``upfirdn2d`` (upsample, FIR filter, downsample)
and ``bias_act`` (bias + activation + gain + clamp), and build every resampling convolution from
them. The kernels are only faster versions of simple tensor maths; these functions compute the
same results with ``torch.nn.functional`` so the released weights give the released images on
any device. Conventions follow the originals exactly (filter normalisation, padding arithmetic,
"flip_weight" meaning correlation vs. convolution), because a one-pixel shift in the resampling
would already change every image the generator makes.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# activation -> (function, default gain). The default gains keep activations' variance ~1.
_ACTS = {
    "linear": (lambda x, a: x, 1.0),
    "relu": (lambda x, a: F.relu(x), math.sqrt(2)),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), math.sqrt(2)),
    "tanh": (lambda x, a: torch.tanh(x), 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 1.0),
    "elu": (lambda x, a: F.elu(x), 1.0),
    "selu": (lambda x, a: F.selu(x), 1.0),
    "softplus": (lambda x, a: F.softplus(x), 1.0),
    "swish": (lambda x, a: torch.sigmoid(x) * x, math.sqrt(2)),
}


def activation_gain(act: str) -> float:
    if act not in _ACTS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTS)}")
    return _ACTS[act][1]


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """``act(x + b) * gain``, then clamp to ±clamp (the order of StyleGAN2's fused op)."""
    fn, def_gain = _ACTS[act] if act in _ACTS else (None, None)
    if fn is None:
        raise ValueError(f"unknown activation {act!r}")
    alpha = 0.2 if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    x = fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(
    f: Sequence[float] | torch.Tensor | None,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: Optional[bool] = None,
) -> torch.Tensor:
    """The FIR filter buffer as StyleGAN2 stores it: 1-D taps become an outer-product 2-D kernel
    (short filters) normalised to sum 1; long filters (>= 8 taps) stay separable."""
    if f is None:
        f = [1.0]
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def _filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    if f is None:
        return 1, 1
    return (f.shape[-1], f.shape[0]) if f.ndim == 2 else (f.shape[-1], f.shape[-1])


def _pad4(padding: int | Sequence[int]) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    padding = list(padding)
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    return padding


class _FirCorrelation(torch.autograd.Function):
    """``F.conv2d(x, k)`` of one-channel images [M,1,H,W] with a fixed kernel (a FIR filter), whose input
    gradient is again a forward correlation: the gradient zero-padded by the kernel size less one and
    correlated with the kernel flipped.

    Why: autograd's gradient of this convolution is cuDNN's data-gradient kernel, which for 1->1 channels
    runs as a plain-fp32 implicit GEMM (``sm80_xmma_dgrad_implicit_gemm_f32f32_f32f32_f32`` on an H100,
    about a quarter of an inversion step's GPU time), while the forward kernel of the same shape is cheap.
    The filter is a buffer, never trained, so no gradient for it is formed. The same arithmetic as
    autograd's (a correlation of the same values), so results agree to float rounding."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(k)
        return F.conv2d(x, k)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (k,) = ctx.saved_tensors
        kh, kw = k.shape[-2], k.shape[-1]
        grad = F.pad(grad.contiguous(), [kw - 1, kw - 1, kh - 1, kh - 1])
        return F.conv2d(grad, k.flip([2, 3])), None


def _fir(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """One FIR pass over [M,1,H,W]; the custom gradient only where one is needed."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _FirCorrelation.apply(x, k)
    return F.conv2d(x, k)


def upfirdn2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Zero-insertion upsampling by ``up``, padding (negative = crop) [x0,x1,y0,y1], FIR filter
    ``f``, then keep every ``down``-th pixel. x: [N,C,H,W]."""
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    px0, px1, py0, py1 = _pad4(padding)
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:  # F.conv2d is a correlation; the op is defined as a true convolution
        f = f.flip(list(range(f.ndim)))
    # one filter for every channel: fold channels into the batch (a plain 1->1 conv is much faster
    # than a depthwise grouped conv on CPU, and the same on GPU)
    hh, ww = x.shape[2], x.shape[3]
    x = x.reshape(n * c, 1, hh, ww)
    if f.ndim == 2:
        x = _fir(x, f[None, None])
    else:
        x = _fir(x, f[None, None, None, :])
        x = _fir(x, f[None, None, :, None])
    x = x.reshape(n, c, x.shape[2], x.shape[3])
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, padding: int = 0, flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _pad4(padding)
    p = [px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up)


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding=0, groups: int = 1, transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    if not flip_weight and (w.shape[-1] > 1 or w.shape[-2] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """2-D convolution with optional FIR-filtered up/downsampling (StyleGAN2's conv2d_resample).

    Upsampling is done as a strided transposed convolution followed by the FIR filter, which is
    what the released weights were trained with (the filter is applied after, not before)."""
    out_ch, in_ch_g, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _pad4(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)[:, :, ::down, ::down]
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up, flip_filter=flip_filter)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_ch_g, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_ch_g, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up, flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
    demodulate: bool = True,
    flip_weight: bool = True,
) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation as one grouped convolution (one group per sample).

    The original's "non-fused" path (scale activations instead of weights) gives the same result;
    the grouped form is used everywhere here because it is one kernel launch for the batch."""
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = weight[None] * styles.reshape(b, 1, -1, 1, 1)  # [B,O,I,k,k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(b, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, f=resample_filter, up=up, down=down, padding=padding, groups=b, flip_weight=flip_weight)
    x = x.reshape(b, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
