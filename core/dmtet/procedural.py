"""A procedural, non-convex head-like shape with an analytic SDF (a test target for sculpting).

Skull ellipsoid + nose + brow ridge + chin + cheeks (smooth unions), eye sockets (smooth subtraction)
and a neck stub. In the pack's world frame: +y up, face toward +z, fits inside radius ~0.9.
"""
from __future__ import annotations

import torch


def ellipsoid_sdf(p: torch.Tensor, center, radii) -> torch.Tensor:
    """Signed distance bound of an axis-aligned ellipsoid at points p [...,3] (negative inside): zero exactly
    on the surface, the true distance for a sphere; the shape primitive of the procedural and the template head."""
    c = torch.as_tensor(center, dtype=p.dtype, device=p.device)
    r = torch.as_tensor(radii, dtype=p.dtype, device=p.device)
    q = (p - c) / r
    k0 = q.norm(dim=-1)
    k1 = (q / r).norm(dim=-1)
    return k0 * (k0 - 1.0) / k1.clamp_min(1e-9)  # Quilez' ellipsoid bound: exact on the surface


def smin(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth union of two SDFs (polynomial smooth minimum, blend width ``k``); also used by the
    PanoHead template head (core.panohead.template)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b * (1 - h) + a * h - k * h * (1 - h)


def smax(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth intersection (``smax(d, -other, k)``: smooth subtraction)."""
    return -smin(-a, -b, k)


def head_sdf(p: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (negative inside) of the procedural head at points p [...,3]."""
    d = ellipsoid_sdf(p, (0.0, 0.05, -0.02), (0.52, 0.62, 0.6))  # skull
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.3, 0.12), (0.34, 0.3, 0.4)), 0.08)  # jaw
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.52, 0.3), (0.13, 0.1, 0.12)), 0.06)  # chin bump
    d = smin(d, ellipsoid_sdf(p, (0.0, 0.2, 0.5), (0.36, 0.07, 0.1)), 0.05)  # brow ridge
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.03, 0.62), (0.07, 0.17, 0.12)), 0.04)  # nose
    d = smin(d, ellipsoid_sdf(p, (0.24, -0.1, 0.4), (0.12, 0.1, 0.1)), 0.05)  # cheeks
    d = smin(d, ellipsoid_sdf(p, (-0.24, -0.1, 0.4), (0.12, 0.1, 0.1)), 0.05)
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.62, -0.1), (0.2, 0.22, 0.2)), 0.08)  # neck
    for sx in (0.17, -0.17):  # eye sockets (concave)
        d = smax(d, -ellipsoid_sdf(p, (sx, 0.08, 0.58), (0.1, 0.06, 0.09)), 0.03)
    return d


def sphere_sdf(p: torch.Tensor, radius: float = 0.5) -> torch.Tensor:
    return p.norm(dim=-1) - radius


def procedural_head_mesh(n: int = 64, radius: float = 1.0):
    """The procedural head as a HeadMesh, extracted by marching tets on an n-cube grid."""
    from ..mesh import HeadMesh
    from .grid import TetGrid
    from .marching_tets import marching_tets

    g = TetGrid(n, radius)
    pos = g.vertices()
    v, f = marching_tets(g, pos, head_sdf(pos))
    return HeadMesh(v.detach(), f)
