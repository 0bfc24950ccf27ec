"""The VAE encoder's memory-lean backward (core/sd_vae_ops.py): same outputs and input gradients as plain
autograd, and autograd keeps only what the input gradient needs (counted, against a closed form).

CPU, small inputs; the byte counts run on the meta device (shapes only, no arithmetic).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from triton_interpreter import in_interpreter, needs_triton, rerun_in_interpreter

from idsculpt.core.sd_vae_encoder import EncoderConfig, SDVAEEncoder, matmul_attention
from idsculpt.core.sd_vae_ops import (conv2d_input_grad_only, group_norm_silu, matmul_attention_lean,
                                      matmul_attention_plain)

SD_CONFIG = EncoderConfig(in_channels=3, ch=128, level_channels=(128, 256, 512, 512), num_res_blocks=2,
                          attn_levels=(), out_channels=8, quant_channels=8)
# small, but with every kind of layer: per-level attention, a channel change (nin_shortcut), downsampling
SMALL_CONFIG = EncoderConfig(in_channels=3, ch=32, level_channels=(32, 64), num_res_blocks=2,
                             attn_levels=(1,), out_channels=8, quant_channels=8)


def _input_grad(fn, x: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    (y * probe).sum().backward()
    return y.detach(), x.grad


def _encoder(cfg: EncoderConfig, lean: bool, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> SDVAEEncoder:
    with torch.device(device):
        enc = SDVAEEncoder(cfg, lean_backward=lean)
    if device != "meta":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in enc.named_parameters():
                if name.endswith("weight") and p.ndim == 1:  # GroupNorm scale: around 1
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    fan_in = p[0].numel() if p.ndim > 1 else 1
                    p.copy_(torch.randn(p.shape, generator=g) * (0.5 / fan_in ** 0.5 if p.ndim > 1 else 0.1))
    return enc.to(dtype).requires_grad_(False)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_silu_gradient_equals_plain_autograd(affine: bool) -> None:
    norm = nn.GroupNorm(4, 8, eps=1e-6, affine=affine).double().requires_grad_(False)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, generator=g) * 3 + 1
    probe = torch.randn(2, 8, 5, 6, dtype=torch.float64, generator=g)
    y_ref, g_ref = _input_grad(lambda t: F.silu(norm(t)), x, probe)
    y, gx = _input_grad(lambda t: group_norm_silu(t, norm), x, probe)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, g_ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: group_norm_silu(t, norm), (x[:1, :, :3, :3].clone().requires_grad_(True),))


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 0, 3), (1, 0, 1)])
def test_conv_input_gradient_equals_plain_autograd(stride: int, padding: int, kernel: int) -> None:
    conv = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding).double().requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64, generator=g)
    probe = torch.randn_like(conv(x))
    y_ref, g_ref = _input_grad(conv, x, probe)
    y, gx = _input_grad(lambda t: conv2d_input_grad_only(t, conv), x, probe)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_attention_gradient_equals_plain_autograd(dtype: torch.dtype) -> None:
    """The lean attention runs plain autograd's backward ops on the same values: bf16 included, equal."""
    g = torch.Generator().manual_seed(3)
    qkv = [torch.randn(2, 16, 36, generator=g).to(dtype) for _ in range(3)]
    probe = torch.randn(2, 16, 36, generator=g).to(dtype)

    def grads(fn):
        ts = [t.clone().requires_grad_(True) for t in qkv]
        y = fn(*ts)
        (y * probe).sum().backward()
        return [y.detach()] + [t.grad for t in ts]

    ref, lean = grads(matmul_attention_plain), grads(matmul_attention_lean)
    for a, b in zip(lean, ref):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encoder_outputs_and_input_gradient_equal_plain_autograd(dtype: torch.dtype) -> None:
    """Whole encoder, lean vs plain: same forward, and the same input gradient (bit for bit in bf16, the
    ISD's dtype: the backward runs the kernels autograd runs, on the same values)."""
    plain, lean = (_encoder(SMALL_CONFIG, flag, dtype, seed=4) for flag in (False, True))
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).to(dtype)
    probe = torch.randn(2, 8, 8, 8, generator=g).to(dtype)  # one downsampling
    z_ref, g_ref = _input_grad(plain, x, probe)
    z, gx = _input_grad(lean, x, probe)
    assert torch.equal(z, z_ref)  # the forward runs the same kernels
    assert g_ref.abs().max() > 0
    if dtype == torch.bfloat16:
        assert torch.equal(gx, g_ref)
    else:
        torch.testing.assert_close(gx, g_ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # no graph: the plain ops, same values
        assert torch.equal(lean(x), z_ref)


def test_weights_that_need_grad_take_the_plain_path() -> None:
    enc = _encoder(SMALL_CONFIG, True, torch.float32, seed=6)
    enc.encoder.conv_out.weight.requires_grad_(True)
    enc.encoder.norm_out.weight.requires_grad_(True)
    enc(torch.rand(1, 3, 16, 16)).sum().backward()
    assert enc.encoder.conv_out.weight.grad is not None and enc.encoder.norm_out.weight.grad is not None


def saved_bytes(enc: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of ``enc(x)``: saved tensors, each storage once, weights excluded."""
    params = {id(p) for p in enc.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in params:
            seen[id(base)] = base  # held: ids stay unique while counting
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(x)
    return sum(t.numel() * t.element_size() for t in seen.values())


def expected_lean_bytes(cfg: EncoderConfig, batch: int, res: int, itemsize: int) -> int:
    """Closed form of what the lean backward keeps: each ResNet block's input and conv1 output (the two
    GroupNorms' inputs), each attention block's input, q, k, v ([C,N] each) and scaled logits [N,N],
    norm_out's input, and every GroupNorm's per-group mean and 1/std (in the input's dtype).
    Convolutions, paddings and SiLU keep nothing."""
    stat = itemsize
    total, c, side = 0, cfg.ch, res

    def resnet(c_in: int, c_out: int, side: int) -> int:
        return batch * side * side * (c_in + c_out) * itemsize + 2 * 2 * batch * 32 * stat

    def attn(c: int, side: int) -> int:
        n = side * side
        return batch * (4 * c * n + n * n) * itemsize + 2 * batch * 32 * stat  # GroupNorm alone keeps its stats too

    for i, c_out in enumerate(cfg.level_channels):
        for _ in range(cfg.num_res_blocks):
            total += resnet(c, c_out, side)
            c = c_out
            if i in cfg.attn_levels:
                total += attn(c, side)
        if i != len(cfg.level_channels) - 1:
            side //= 2
    total += 2 * resnet(c, c, side) + attn(c, side)
    return total + batch * c * side * side * itemsize + 2 * batch * 32 * stat  # norm_out


@pytest.mark.parametrize("cfg,res", [(SD_CONFIG, 128), (SMALL_CONFIG, 32)])
def test_saved_bytes_are_what_the_input_gradient_needs(cfg: EncoderConfig, res: int) -> None:
    """Fails if any layer goes back to plain autograd (which keeps ~3x as much)."""
    x = torch.empty(2, 3, res, res, device="meta", dtype=torch.bfloat16, requires_grad=True)
    lean = saved_bytes(_encoder(cfg, True, torch.bfloat16, "meta"), x)
    plain = saved_bytes(_encoder(cfg, False, torch.bfloat16, "meta"), x)
    assert lean == expected_lean_bytes(cfg, 2, res, 2)
    assert plain > 2.5 * lean


def test_saved_bytes_counted_on_real_tensors_match_meta() -> None:
    """The meta count is what a real CPU run keeps (storages deduplicated by address there)."""
    enc = _encoder(SMALL_CONFIG, True, torch.float32, seed=7)
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    ptrs: dict[int, int] = {}
    params = {p.data_ptr() for p in enc.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            ptrs[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(x)
    assert sum(ptrs.values()) == expected_lean_bytes(SMALL_CONFIG, 1, 16, 4)


def test_matmul_attention_lean_flag_keeps_values() -> None:
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 8, 4, 4, generator=g) for _ in range(3))
    assert torch.equal(matmul_attention(q, k, v, lean=True), matmul_attention(q, k, v, lean=False))


# ------------------------------------------------------------- the fused GroupNorm + SiLU backward (Triton)
@needs_triton
def test_fused_silu_grad_of_group_norm_equals_the_native_kernels() -> None:
    """The Triton kernel (``_silu_grad_fused``: SiLU's backward of GroupNorm rebuilt from the saved mean /
    rstd) against PyTorch's native GroupNorm + silu_backward, with and without affine parameters, and the
    lean encoder's input gradient with the kernel on against plain autograd. On CUDA natively in bf16 (at
    most one bf16 rounding apart: the exp); on a CPU in Triton's interpreter, in float32, in a fresh
    process (the interpreter must be on before Triton is first imported)."""
    if torch.cuda.is_available():
        return _fused_compare(torch.device("cuda"), torch.bfloat16)
    if not in_interpreter():
        return rerun_in_interpreter(__file__, "test_fused_silu_grad_of_group_norm_equals_the_native_kernels")
    return _fused_compare(torch.device("cpu"), torch.float32)


def _fused_compare(dev: torch.device, dtype: torch.dtype) -> None:
    from idsculpt.core import sd_vae_ops as ops

    ops.FUSED_BACKWARD.reset()
    assert ops.FUSED_BACKWARD.get() is not None
    g = torch.Generator().manual_seed(0)
    for n, c, h, w, groups, affine in ((2, 32, 9, 7, 8, True), (1, 64, 16, 16, 32, False), (3, 16, 5, 5, 4, True)):
        x = (torch.randn(n, c, h, w, generator=g) * 2 + 0.5).to(dev, dtype)
        grad = torch.randn(n, c, h, w, generator=g).to(dev, dtype)
        weight = (1 + 0.3 * torch.randn(c, generator=g)).to(dev, dtype) if affine else None
        bias = (0.2 * torch.randn(c, generator=g)).to(dev, dtype) if affine else None
        hw = h * w
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, 1e-6)
        want = torch.ops.aten.silu_backward(grad, y)
        got = ops._silu_grad_fused(x, grad, weight, bias, mean, rstd, n, c, hw, groups)
        assert got.dtype == want.dtype and got.shape == want.shape
        ulp = 2 ** -7 if dtype == torch.bfloat16 else 1e-6
        assert ((got.float() - want.float()).abs() <= ulp * (1 + want.float().abs())).all()
    # the whole lean encoder with the kernel against plain autograd
    cfg = SMALL_CONFIG
    lean, plain = _encoder(cfg, True, dtype, str(dev)), _encoder(cfg, False, dtype, str(dev))
    x = torch.rand(1, 3, 32, 32, generator=g).to(dev, dtype) * 2 - 1
    probe = torch.randn(1, 8, 16, 16, generator=g).to(dev, dtype)
    ops.FUSED_BACKWARD.available = lambda device: True  # the interpreter runs on the CPU
    try:
        _, gl = _input_grad(lean, x, probe)
    finally:
        del ops.FUSED_BACKWARD.available  # the method again
    _, gp = _input_grad(plain, x, probe)
    rel = float((gl.float() - gp.float()).abs().max() / gp.float().abs().max())
    assert rel < (2e-2 if dtype == torch.bfloat16 else 1e-5), rel
