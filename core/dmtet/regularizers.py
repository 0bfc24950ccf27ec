"""Mesh regularisers of the sculpting stage: normal consistency and Laplacian smoothness.

Both have the exact form of threestudio's (``Mesh.normal_consistency`` and
``laplacian_smooth_loss``), which the authors' weights (normal consistency 500 → 10000, Laplacian
1e5 → 1.5e5) were tuned for. Both run on the marching-tets mesh of each step, which changes from
step to step; edges are deduplicated on that surface only, never on the tet grid.
"""
from __future__ import annotations

import torch

from ..mesh import vertex_normals  # one definition, shared with the renderer and HeadMesh


def mesh_edges(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """Unique undirected edges [E,2] of a triangle mesh."""
    f = faces.long()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = torch.unique(e.min(1).values * num_vertices + e.max(1).values)
    return torch.stack([key // num_vertices, key % num_vertices], 1)


def normal_consistency_loss(vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over mesh edges of (1 − cos) between the unit vertex normals at the edge's two ends."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    n = vertex_normals(vertices, faces.long())
    e = mesh_edges(faces, vertices.shape[0]) if edges is None else edges
    return (1 - (n.index_select(0, e[:, 0]) * n.index_select(0, e[:, 1])).sum(-1)).mean()


def laplacian_loss(vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over vertices and coordinates of the squared uniform Laplacian, mean(neighbours) − v.
    Penalises bumps at the scale of one edge. (With every edge in two faces, this equals
    threestudio's face-accumulated form.) ``edges``: the mesh's unique edges when already known
    (``mesh_edges`` sorts, and reads its size back from the GPU)."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    nv = vertices.shape[0]
    e = mesh_edges(faces, nv) if edges is None else edges
    src = torch.cat([e[:, 0], e[:, 1]])
    dst = torch.cat([e[:, 1], e[:, 0]])
    acc = torch.zeros_like(vertices).index_add(0, src, vertices.index_select(0, dst))
    deg = torch.zeros(nv, dtype=vertices.dtype, device=vertices.device).index_add(0, src, torch.ones_like(src, dtype=vertices.dtype))
    lap = acc / deg.clamp_min(1)[:, None] - vertices
    used = (deg > 0).to(vertices.dtype)[:, None]  # vertices on an edge (a mask, not an index: no host sync)
    return ((lap**2) * used).sum() / (3 * used.sum()).clamp_min(1)
