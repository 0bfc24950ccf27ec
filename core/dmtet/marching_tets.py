"""Differentiable marching tetrahedra on a :class:`TetGrid` (DMTet, Shen et al. 2021; as used by
Magic3D / threestudio).

Convention: SDF < 0 inside, >= 0 outside. A surface vertex sits on every grid edge whose ends have
different signs, at the linear zero crossing

    p = (s_b · p_a − s_a · p_b) / (s_b − s_a),

which is differentiable with respect to both the SDF values and the (deformed) vertex positions:
this is how image losses reach the SDF and the deformation.

Which triangles a tet emits depends only on its inside/outside pattern (16 cases). The triangle table
is derived here, not typed in: for every case the triangles are oriented on a positively oriented
reference tet so that their normals point from the inside corners to the outside ones. An affine map
with positive determinant keeps orientation, so the table is valid for every positively oriented tet
(the undeformed grid guarantees that; the authors' deformation bound of half a cell can invert a tet,
whose triangles then come out reversed, exactly as in threestudio's marching tets).
Surface vertices are shared by the tets around an edge (they are indexed by global edge id), so the
mesh is watertight wherever the surface does not touch the grid boundary.

Only cubes whose 8 corners are not all on one side are visited, so the cost scales with the surface
area (O(n²)), not with the 6·n³ tets.
"""
from __future__ import annotations

import torch

from .grid import EDGE_DIRECTIONS, TET_EDGES, TetGrid


def _build_triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """[16, 2, 3] local-edge indices of up to two triangles per case, and [16] triangle counts."""
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.linalg.det(ref[1:] - ref[0]) > 0
    edge_of = {frozenset(e): i for i, e in enumerate(TET_EDGES)}
    table = torch.zeros(16, 2, 3, dtype=torch.int64)
    count = torch.zeros(16, dtype=torch.int64)
    for code in range(16):
        inside = [k for k in range(4) if (code >> k) & 1]
        outside = [k for k in range(4) if not (code >> k) & 1]
        if not inside or not outside:
            continue
        if len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # The four crossing edges form the cycle ac → ad → bd → bc; split along ac–bd.
            cyc = [edge_of[frozenset((a, c))], edge_of[frozenset((a, d))], edge_of[frozenset((b, d))], edge_of[frozenset((b, c))]]
            tris = [[cyc[0], cyc[1], cyc[2]], [cyc[0], cyc[2], cyc[3]]]
        else:
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            tris = [[edge_of[frozenset((lone, o))] for o in others]]
        cin, cout = ref[inside].mean(0), ref[outside].mean(0)
        for t, tri in enumerate(tris):
            p = torch.stack([ref[list(TET_EDGES[e])].mean(0) for e in tri])  # crossing at midpoints
            nrm = torch.linalg.cross(p[1] - p[0], p[2] - p[0])
            if torch.dot(nrm, cout - cin) < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, t] = torch.tensor(tri)
        count[code] = len(tris)
    return table, count


TRIANGLE_TABLE, NUM_TRIANGLES = _build_triangle_table()


def marching_tets(grid: TetGrid, positions: torch.Tensor, sdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Extract the zero level set of ``sdf`` on ``grid``.

    positions: [(n+1)³, 3] (possibly deformed) grid vertex positions.
    sdf: [(n+1)³] signed distance values (negative inside).
    Returns (vertices [V,3] differentiable wrt positions and sdf, faces [F,3] int64, outward CCW).
    An empty level set gives empty tensors.
    """
    if sdf.shape[0] != grid.num_vertices or positions.shape[0] != grid.num_vertices:
        raise ValueError(f"marching_tets: expected {grid.num_vertices} grid values, got sdf {tuple(sdf.shape)}, positions {tuple(positions.shape)}")
    dev = sdf.device
    s, n = grid.side, grid.n
    inside = (sdf < 0).detach()
    ins3 = inside.view(s, s, s)

    # Cubes with mixed corners (any inside and any outside).
    corners = [ins3[i : i + n, j : j + n, k : k + n] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    stack = torch.stack(corners, 0)
    mixed = stack.any(0) & ~stack.all(0)
    cubes = mixed.reshape(-1).nonzero().squeeze(1)
    if cubes.numel() == 0:
        return positions.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64, device=dev)

    tets = grid.tets(cubes)  # [T,4]
    code = (inside[tets].long() * torch.tensor([1, 2, 4, 8], device=dev)).sum(-1)
    keep = (code > 0) & (code < 15)
    tets, code = tets[keep], code[keep]
    edge_ids = grid.tet_edge_ids(cubes)[keep]  # [T,6]

    # Crossing edges of the whole grid, enumerated per direction: sorted and unique by construction.
    dmask = torch.zeros(s, s, s, 7, dtype=torch.bool, device=dev)
    for di, (ox, oy, oz) in enumerate(EDGE_DIRECTIONS.tolist()):
        a = ins3[: s - ox, : s - oy, : s - oz]
        b = ins3[ox:, oy:, oz:]
        dmask[: s - ox, : s - oy, : s - oz, di] = a != b
    crossing = dmask.reshape(-1).nonzero().squeeze(1)  # sorted edge ids

    va, vb = grid.edge_endpoints(crossing)
    # index_select, not x[idx]: its backward is one index_add (x[idx]'s sorts the indices first: several
    # kernels and a sync each, four times per step; docs/PERFORMANCE.md)
    sa, sb = sdf.index_select(0, va)[:, None], sdf.index_select(0, vb)[:, None]
    verts = (sb * positions.index_select(0, va) - sa * positions.index_select(0, vb)) / (sb - sa)

    # Triangles: table lookup → local edges → global edge ids → compact vertex indices.
    tri_local = TRIANGLE_TABLE.to(dev)[code]  # [T,2,3]
    ntri = NUM_TRIANGLES.to(dev)[code]  # [T]
    tri_edges = torch.gather(edge_ids[:, None, :].expand(-1, 2, -1), 2, tri_local)  # [T,2,3]
    valid = torch.arange(2, device=dev)[None, :] < ntri[:, None]
    tri_edges = tri_edges[valid]  # [F,3]
    faces = torch.searchsorted(crossing, tri_edges)
    return verts, faces
