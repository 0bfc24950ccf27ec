"""Triton kernel of sd_vae_ops' lean GroupNorm + SiLU backward (imported only where Triton is; see
sd_vae_ops.group_norm_silu for what it computes and why)."""
import triton
import triton.language as tl


@triton.jit
def silu_grad_of_group_norm(x_ptr, grad_ptr, out_ptr, mean_ptr, rstd_ptr, weight_ptr, bias_ptr, C, HW, CG,
                            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """out = grad · SiLU'(y), y = GroupNorm(x) rebuilt from the forward's saved mean / rstd: one pass over x
    and grad. Grid (N·C, cdiv(HW, BLOCK)); x, grad, out contiguous [N, C, HW]; mean, rstd [N, C // CG].
    The arithmetic is PyTorch's CUDA GroupNorm and SiLU backward: a = rstd·γ, b = −a·mean + β and
    y = a·x + b in float32, y rounded to the input's dtype (what the forward stored), then
    dy·s·(1 + y·(1 − s)) with s = sigmoid(y) in float32."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    c = row % C
    ng = (row // C) * (C // CG) + c // CG
    mean = tl.load(mean_ptr + ng).to(tl.float32)
    a = tl.load(rstd_ptr + ng).to(tl.float32)
    if HAS_WEIGHT:
        a = a * tl.load(weight_ptr + c).to(tl.float32)
    if HAS_BIAS:  # fused multiply-adds, as nvcc contracts PyTorch's float expressions
        b = tl.fma(-a, mean, tl.load(bias_ptr + c).to(tl.float32))
    else:
        b = -a * mean
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    base = row * HW
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.fma(a, x, b).to(x_ptr.dtype.element_ty).to(tl.float32)
    dy = tl.load(grad_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-y))
    tl.store(out_ptr + base + offs, (dy * s * (1.0 + y * (1.0 - s))).to(out_ptr.dtype.element_ty), mask=mask)
