"""Fast-path options (issue "Speed and memory") that are not covered by the stage tests."""
from __future__ import annotations

import pytest
import torch

from idsculpt.core.mesh import HeadMesh
from idsculpt.core.texture import unwrap_uv


def _sphere(levels: int = 5) -> HeadMesh:
    """Unit sphere from a subdivided octahedron (smooth and closed: xatlas makes a few big charts)."""
    v = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    for _ in range(levels):
        e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        uniq, inv = torch.unique(e.min(1).values * len(v) + e.max(1).values, return_inverse=True)
        mid = torch.nn.functional.normalize(v[uniq // len(v)] + v[uniq % len(v)], dim=-1)
        m = inv.view(3, -1) + len(v)
        v = torch.cat([v, mid])
        f = torch.cat([torch.stack([f[:, 0], m[0], m[2]], 1), torch.stack([f[:, 1], m[1], m[0]], 1),
                       torch.stack([f[:, 2], m[2], m[1]], 1), torch.stack([m[0], m[1], m[2]], 1)])
    return HeadMesh(v, f)


def test_unwrap_chart_area_cap_bounds_charts() -> None:
    sphere = _sphere()
    _, info_free = unwrap_uv(sphere, 256)
    capped, info = unwrap_uv(sphere, 256, max_chart_area_fraction=0.02)
    # no chart may exceed 2 % of the surface area, so at least 50 charts are needed; unbounded
    # xatlas covers this sphere with a handful
    assert info_free.charts < 20 and info.charts >= 50
    assert torch.equal(capped.faces, sphere.faces) and capped.uv_faces.shape == sphere.faces.shape
    assert bool(((capped.uvs >= 0) & (capped.uvs <= 1)).all())
    with pytest.raises(ValueError, match="max_chart_area_fraction"):
        unwrap_uv(sphere, 256, max_chart_area_fraction=0.0)
