"""Triton kernel of the tri-grid lookup's feature gradient (imported only where Triton is; see
triplane.trigrid_lookup for what it replaces and why)."""
import triton
import triton.language as tl


@triton.jit
def trigrid_feature_grad(grid_ptr, grad_ptr, out_ptr, M, C, D, H, W, g_sp, g_sc, g_sm,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[p, z, y, x, :] += w · grad[p, :, m] over the 8 corners of each lookup point, channels last.

    Grid (P, cdiv(M, BLOCK_M)). grid: contiguous [P, M, 3] normalised (x, y, z) in [-1, 1] as grid_sample takes
    them (x indexes W, y H, z D); grad: [P, C, M] with strides (g_sp, g_sc, g_sm); out: zeroed float32
    [P, D, H, W, C]. The arithmetic of grid_sample's trilinear mode with align_corners=False and zero padding:
    source index ((v + 1)·size − 1) / 2, corner weights the products of the fractional distances, corners
    outside the volume dropped. With channels innermost a warp's atomic adds land on consecutive addresses,
    which the native kernel's [P, C, D, H, W] layout (one point per thread, channels a volume apart) cannot."""
    p = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < M
    c = tl.arange(0, BLOCK_C)
    cmask = c < C
    gp = grid_ptr + p * M * 3 + m.to(tl.int64) * 3
    x = tl.load(gp, mask=mmask, other=0.0).to(tl.float32)
    y = tl.load(gp + 1, mask=mmask, other=0.0).to(tl.float32)
    z = tl.load(gp + 2, mask=mmask, other=0.0).to(tl.float32)
    ix = ((x + 1.0) * W - 1.0) / 2.0
    iy = ((y + 1.0) * H - 1.0) / 2.0
    iz = ((z + 1.0) * D - 1.0) / 2.0
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    z0f = tl.floor(iz)
    fx = ix - x0f
    fy = iy - y0f
    fz = iz - z0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    z0 = z0f.to(tl.int32)
    g = tl.load(grad_ptr + p * g_sp + c[None, :].to(tl.int64) * g_sc + m[:, None].to(tl.int64) * g_sm,
                mask=mmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    out_p = out_ptr + p * D * H * W * C
    for corner in tl.static_range(8):
        if corner & 1:
            xi = x0 + 1
            wx = fx
        else:
            xi = x0
            wx = 1.0 - fx
        if corner & 2:
            yi = y0 + 1
            wy = fy
        else:
            yi = y0
            wy = 1.0 - fy
        if corner & 4:
            zi = z0 + 1
            wz = fz
        else:
            zi = z0
            wz = 1.0 - fz
        w = wx * wy * wz
        inside = mmask & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H) & (zi >= 0) & (zi < D)
        cell = ((zi.to(tl.int64) * H + yi) * W + xi) * C
        tl.atomic_add(out_p + cell[:, None] + c[None, :], w[:, None] * g, mask=inside[:, None] & cmask[None, :])
