"""Memory-lean autograd for an encoder whose weights are frozen: only the input gradient is wanted.

ISD back-propagates from the latents through the SD VAE encoder into the render. Plain autograd keeps,
for every ``conv(silu(group_norm(x)))`` of a ResNet block, three full activations: GroupNorm's input,
SiLU's input (GroupNorm's output) and the convolution's input (SiLU's output), because PyTorch's
convolution saves its input whether or not the weight needs a gradient. At 512² that is ~1.6 GiB a view
(bf16). The input gradient of a convolution needs only its weight, and SiLU(GroupNorm(x)) can be
recomputed from x in the backward for the price of one GroupNorm pass (elementwise, cheap against a
convolution), so each such triple keeps just x:

- ``conv2d_input_grad_only``: a convolution that saves nothing but its (frozen) weight; its backward is
  ``convolution_backward`` for the input only, the very call autograd makes when the weight needs no
  gradient.
- ``group_norm_silu``: SiLU(GroupNorm(x)) that saves x and the per-group mean / 1/std; the backward
  rebuilds GroupNorm(x) from them, then runs SiLU's and GroupNorm's own backward. On CUDA with Triton
  the rebuild and SiLU's backward are one kernel (``_gn_silu_kernel``) that applies the saved mean /
  1/std: recomputing them (PyTorch's row-moments kernel) made the whole encoder's fwd + input bwd 19 %
  slower on an H100 (4 views at 512²: 51.1 -> 60.6 ms; bench/probes/vae_saved_memory.py). Elsewhere
  the native GroupNorm runs again.
- ``matmul_attention_lean``: one-head attention (matmul + fp32 softmax) that saves q, k, v and the
  scaled bf16 logits instead of the fp32 softmax and its bf16 cast (3x the bytes at 64² tokens); the
  backward recomputes the softmax from the same logits.

Forward outputs are bit-identical to the plain ops. The backward runs PyTorch's kernels on the same values,
so input gradients equal plain autograd's, except that the Triton kernel's exp may differ from CUDA's in
the last bit (it does PyTorch's float arithmetic, fused multiply-adds included): a bf16 rounding at most.
These Functions assume the weights do not require grad (callers check); they are once-differentiable. Of
the rest of the pack only core/speed's optional-kernel switch is imported.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .speed.triton_kernel import OptionalKernel


def weights_frozen(*tensors: Optional[torch.Tensor]) -> bool:
    return not any(t is not None and t.requires_grad for t in tensors)


class _ConvInputGradOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)  # a frozen parameter: no extra memory
        ctx.conf = (tuple(x.shape), stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        # PyTorch's public input-gradient op: convolution_backward for the input only, which reads just the
        # input's shape (the very call autograd makes when the weight is frozen)
        gx = torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding, dilation, groups)
        return gx, None, None, None, None, None, None


def conv2d_input_grad_only(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a Conv2d with frozen weights that keeps no activation for the backward."""
    if isinstance(conv.padding, str):
        raise ValueError("conv2d_input_grad_only needs numeric padding")
    return _ConvInputGradOnly.apply(x, conv.weight, conv.bias, list(conv.stride), list(conv.padding),
                                    list(conv.dilation), conv.groups)


def _load_fused():
    from ._gn_silu_kernel import silu_grad_of_group_norm

    return silu_grad_of_group_norm


#: the Triton kernel of the lean GroupNorm + SiLU backward; off for the process after its first failure
FUSED_BACKWARD = OptionalKernel(_load_fused, "fused GroupNorm backward", "using PyTorch's kernels")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _silu_grad_fused(x, grad, weight, bias, mean, rstd, n, c, hw, groups) -> torch.Tensor:
    """grad · SiLU'(GroupNorm(x)) from the saved mean / rstd in one kernel ([N,C,HW]-contiguous tensors)."""
    out = torch.empty_like(x)
    block = 1024
    FUSED_BACKWARD.get()[(n * c, _cdiv(hw, block))](
        x, grad, out, mean, rstd, weight if weight is not None else x, bias if bias is not None else x, c, hw, c // groups,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK=block)
    return out


def _silu_grad(x, grad, weight, bias, mean, rstd, n, c, hw, groups, eps) -> torch.Tensor:
    """SiLU's backward of GroupNorm(x): the fused kernel on CUDA with Triton, else the native kernels again."""
    fused = FUSED_BACKWARD.attempt(x.device, lambda: _silu_grad_fused(x, grad, weight, bias, mean, rstd, n, c, hw, groups))
    if fused is not None:
        return fused
    y = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, eps)[0]  # recomputed, same kernel
    # SiLU's backward kernel, written over the recomputed y (elementwise, same index): one full
    # activation less in flight
    return torch.ops.aten.silu_backward.grad_input(grad, y, grad_input=y)


def _group_norm_dims(x: torch.Tensor) -> tuple[int, int, int]:
    n, c = x.shape[:2]
    return n, c, x.numel() // max(n * c, 1)


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        x = x.contiguous()  # what F.group_norm hands the kernel
        n, c, hw = _group_norm_dims(x)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.conf = (n, c, hw, groups, eps)
        return F.silu(y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, hw, groups, eps = ctx.conf
        gy = _silu_grad(x, grad.contiguous(), weight, bias, mean, rstd, n, c, hw, groups, eps)
        gx = torch.ops.aten.native_group_norm_backward(gy, x, mean, rstd, weight, n, c, hw, groups, [True, False, False])[0]
        return gx, None, None, None, None


def group_norm_silu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``F.silu(norm(x))`` for a GroupNorm with frozen (or no) affine parameters, saving only x."""
    return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)


def _attention_logits(qf: torch.Tensor, kf: torch.Tensor) -> torch.Tensor:
    return torch.bmm(qf.transpose(1, 2), kf) * (qf.shape[1] ** -0.5)  # [B,N,N] in the inputs' dtype


def _attention_weights(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1).to(dtype)  # softmax in fp32


def matmul_attention_plain(qf: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor) -> torch.Tensor:
    """[B,C,N] q, k, v -> [B,C,N]: bmm, fp32 softmax, bmm, differentiated by plain autograd."""
    w = _attention_weights(_attention_logits(qf, kf), vf.dtype)
    return torch.bmm(vf, w.transpose(1, 2))


class _MatmulAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qf, kf, vf):
        logits = _attention_logits(qf, kf)
        w = _attention_weights(logits, vf.dtype)
        ctx.save_for_backward(qf, kf, vf, logits)
        return torch.bmm(vf, w.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        qf, kf, vf, logits = ctx.saved_tensors
        # the ops plain autograd runs for matmul_attention_plain, in its order, on the same values
        p = torch.softmax(logits.float(), dim=-1)  # recomputed from the same logits: the forward's fp32 weights
        w = p.to(vf.dtype)
        wt = w.transpose(1, 2)
        gv = torch.bmm(grad, wt.transpose(1, 2))
        gwt = torch.bmm(vf.transpose(1, 2), grad)
        del w, wt
        gp = gwt.transpose(1, 2).to(p.dtype)
        del gwt
        gs = torch._softmax_backward_data(gp, p, -1, p.dtype).to(logits.dtype)
        del gp, p
        gs = gs * (qf.shape[1] ** -0.5)
        qt = qf.transpose(1, 2)
        gqt = torch.bmm(gs, kf.transpose(1, 2))
        gk = torch.bmm(qt.transpose(1, 2), gs)
        return gqt.transpose(1, 2), gk, gv


def matmul_attention_lean(qf: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor) -> torch.Tensor:
    """``matmul_attention_plain`` that keeps q, k, v and the scaled logits (not the fp32 softmax)."""
    return _MatmulAttention.apply(qf, kf, vf)


def needs_lean(x: torch.Tensor, params: Sequence[Optional[torch.Tensor]]) -> bool:
    """True when autograd will record this op for an input gradient only (grad on, x tracked, weights frozen)."""
    return torch.is_grad_enabled() and x.requires_grad and weights_frozen(*params)
