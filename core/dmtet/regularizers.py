"""Mesh regularisers of the sculpting stage: normal consistency and Laplacian smoothness.

Both have the form of threestudio's ``Mesh.normal_consistency`` and ``Mesh.laplacian``
(``threestudio/models/mesh.py``), which the authors call with weights 500 / 1e5 up to step 1000
and 10000 / 1.5e5 after (``configs/liudehua_geo.yaml``); the weights only mean what the authors
meant with these exact forms:

* normal consistency: mean over the mesh's unique edges of 1 − cos of the unit vertex normals at
  the edge's two ends (area-weighted vertex normals; a vertex whose faces are all degenerate takes
  the normal (0, 0, 1), as threestudio's ``_compute_vertex_normal`` does).
* Laplacian: L = D − A, the uniform, unnormalised graph Laplacian of the surface (D the vertex
  degrees, A the adjacency), and loss = mean over the vertices of ‖(L v)_i‖₂ = mean deg_i·‖v_i −
  mean_neighbours(v)_i‖ — a norm, not its square, and degree-weighted. A mean *squared* Laplacian is
  thousands of times weaker at these weights on sculpt-sized meshes (docs/SCULPT.md).

Both run on the marching-tets mesh of each step, which changes from step to step; edges are
deduplicated on that surface only, never on the tet grid.
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
    # A zero normal (all faces at the vertex degenerate) normalises to zero; threestudio substitutes +z.
    degenerate = (n * n).sum(-1, keepdim=True) < 0.25
    n = torch.where(degenerate, torch.tensor([0.0, 0.0, 1.0], dtype=n.dtype, device=n.device), n)
    e = mesh_edges(faces, vertices.shape[0]) if edges is None else edges
    return (1 - (n.index_select(0, e[:, 0]) * n.index_select(0, e[:, 1])).sum(-1)).mean()


def uniform_laplacian(vertices: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(L v) [V,3] for L = D − A of the graph ``edges`` [E,2] (unique, undirected): deg_i·v_i − Σ_j∈N(i) v_j.
    Vertices on no edge get 0. Linear in ``vertices`` (L itself is constant, as in threestudio)."""
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    nbr_sum = torch.zeros_like(vertices).index_add(0, src, vertices.index_select(0, dst))
    deg = torch.zeros(vertices.shape[0], dtype=vertices.dtype, device=vertices.device).index_add(
        0, src, torch.ones_like(src, dtype=vertices.dtype))
    return deg[:, None] * vertices - nbr_sum


def laplacian_loss(vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """threestudio's ``Mesh.laplacian``: mean over all V vertices of ‖(L v)_i‖₂ with L = D − A (uniform,
    unnormalised). ``edges``: the mesh's unique edges when already known (``mesh_edges`` sorts, and
    reads its size back from the GPU). Vertices on no face contribute 0 but count in the mean, as in
    threestudio (marching-tets meshes have none)."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    e = mesh_edges(faces, vertices.shape[0]) if edges is None else edges
    # vector_norm's backward at a zero row is 0 (as torch's .norm in threestudio): flat spots give no NaN.
    return torch.linalg.vector_norm(uniform_laplacian(vertices, e), dim=1).mean()


def laplacian_loss_squared_mean(vertices: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """The earlier form, kept only to compare with (tests, docs): mean over vertices and coordinates of
    the squared normalised Laplacian (mean_neighbours(v) − v)². Not threestudio's; ~10³–10⁴× weaker."""
    if faces.shape[0] == 0:
        return vertices.sum() * 0
    e = mesh_edges(faces, vertices.shape[0]) if edges is None else edges
    deg = torch.zeros(vertices.shape[0], dtype=vertices.dtype, device=vertices.device).index_add(
        0, e.reshape(-1), torch.ones(e.numel(), dtype=vertices.dtype, device=vertices.device))
    lap = -uniform_laplacian(vertices, e) / deg.clamp_min(1)[:, None]
    used = (deg > 0).to(vertices.dtype)[:, None]
    return ((lap**2) * used).sum() / (3 * used.sum()).clamp_min(1)
