"""core/dmtet/procedural.py ellipsoid_sdf: the one ellipsoid primitive of the procedural and the template head."""
from __future__ import annotations

import torch

from idsculpt.core.dmtet.procedural import ellipsoid_sdf
from idsculpt.core.panohead.template import template_sdf


def test_sphere_is_the_exact_distance() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(500, 3, generator=g, dtype=torch.float64)
    c, r = (0.1, -0.2, 0.3), 0.7
    want = (p - torch.tensor(c, dtype=torch.float64)).norm(dim=-1) - r  # |p - c| - r, closed form
    assert torch.allclose(ellipsoid_sdf(p, c, (r, r, r)), want, atol=1e-12)


def test_ellipsoid_zero_on_its_surface_and_signed() -> None:
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(400, 3, generator=g, dtype=torch.float64), dim=-1)
    c, r = torch.tensor([0.0, 0.05, -0.02], dtype=torch.float64), torch.tensor([0.52, 0.62, 0.6], dtype=torch.float64)
    surface = c + u * r  # points with ((x - c) / r)·((x - c) / r) = 1
    assert ellipsoid_sdf(surface, c.tolist(), r.tolist()).abs().max() < 1e-12
    assert (ellipsoid_sdf(c + 0.5 * u * r, c.tolist(), r.tolist()) < 0).all()
    assert (ellipsoid_sdf(c + 1.5 * u * r, c.tolist(), r.tolist()) > 0).all()


def test_template_head_uses_it_inside_and_outside() -> None:
    p = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    d = template_sdf(p)
    assert d[0] < 0 < d[1]  # the head's centre is inside, a point 3 units in front is outside
