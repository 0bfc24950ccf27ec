"""Regular tetrahedral grid: an n×n×n lattice of cubes, each split into 6 tetrahedra.

The split is the Kuhn (Freudenthal) triangulation: every tet of a cube runs along a monotone path
from the cube's corner (0,0,0) to (1,1,1) — one tet per permutation of the axes. Neighbouring cubes
use the same split, so the tets form a conforming mesh, and every tet edge joins a lattice vertex v
to v + d with d one of 7 non-zero 0/1 offsets. That makes edges enumerable analytically:
``edge_id = vertex_index * 7 + direction``. No ``torch.unique`` over millions of edges is needed,
which at n = 128 would cost ~11 s and ~5 GB (ENVIRONMENT.md).

Density: ``n = res / 2`` cubes per side matches the vertex density of the Quartet grids
(threestudio/Magic3D "128" and "256" tet grids), so ``TetGrid.from_resolution(128)`` has n = 64.

Every tet returned by :meth:`TetGrid.tets` is positively oriented: det[v1−v0, v2−v0, v3−v0] > 0.
Marching tetrahedra relies on this to emit outward-facing triangles.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

# The 7 edge directions (0/1 offsets, x, y, z) leaving a lattice vertex, in a fixed order.
EDGE_DIRECTIONS = torch.tensor(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.int64
)
# Corner c of a cube (0..7) has offset bits (c>>2 & 1, c>>1 & 1, c & 1) along (x, y, z).
CUBE_CORNERS = torch.tensor([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)], dtype=torch.int64)
# Local edges of a tet as pairs of its vertex slots.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _corner_index(off: tuple[int, int, int]) -> int:
    return off[0] * 4 + off[1] * 2 + off[2]


def _direction_index(d: tuple[int, int, int]) -> int:
    for i, e in enumerate(EDGE_DIRECTIONS.tolist()):
        if tuple(e) == tuple(d):
            return i
    raise AssertionError(d)


def _build_cube_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the 6 tets of a cube: corner indices [6,4] (positively oriented), and for each of the 6
    local edges the start corner [6,6] and edge direction [6,6] (edges always go from the vertex
    earlier on the monotone path to the later one, so the offset is a 0/1 vector)."""
    tet_corners, edge_start, edge_dir = [], [], []
    for perm in itertools.permutations(range(3)):
        path = [(0, 0, 0)]
        cur = [0, 0, 0]
        for axis in perm:
            cur[axis] = 1
            path.append(tuple(cur))
        # Orientation of the path tet = sign of the permutation; swap two slots for odd ones.
        p = torch.tensor(path, dtype=torch.float64)
        det = torch.linalg.det(torch.stack([p[1] - p[0], p[2] - p[0], p[3] - p[0]]))
        order = [0, 1, 2, 3] if det > 0 else [0, 1, 3, 2]
        verts = [path[i] for i in order]
        tet_corners.append([_corner_index(v) for v in verts])
        starts, dirs = [], []
        for a, b in TET_EDGES:
            va, vb = verts[a], verts[b]
            if sum(va) > sum(vb):  # later on the path = more bits set
                va, vb = vb, va
            starts.append(_corner_index(va))
            dirs.append(_direction_index(tuple(y - x for x, y in zip(va, vb))))
        edge_start.append(starts)
        edge_dir.append(dirs)
    return torch.tensor(tet_corners), torch.tensor(edge_start), torch.tensor(edge_dir)


CUBE_TET_CORNERS, CUBE_TET_EDGE_START, CUBE_TET_EDGE_DIR = _build_cube_tables()


@dataclass
class TetGrid:
    """A regular tet grid over the cube [-radius, radius]³ with ``n`` cubes per side."""

    n: int
    radius: float = 1.0
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"TetGrid needs at least 2 cubes per side, got n={self.n}")
        self.device = torch.device(self.device)

    @staticmethod
    def from_resolution(res: int, radius: float = 1.0, device: torch.device | str = "cpu") -> "TetGrid":
        """Grid matching the density of a Quartet "res" tet grid (n = res / 2 cubes per side)."""
        if res < 4:
            raise ValueError(f"tet grid resolution must be >= 4, got {res}")
        return TetGrid(max(2, res // 2), radius, device)

    # ------------------------------------------------------------------ sizes
    @property
    def side(self) -> int:
        """Lattice vertices per side (n + 1)."""
        return self.n + 1

    @property
    def num_vertices(self) -> int:
        return self.side**3

    @property
    def num_tets(self) -> int:
        return 6 * self.n**3

    @property
    def cell_size(self) -> float:
        return 2.0 * self.radius / self.n

    # ------------------------------------------------------------------ geometry
    def vertices(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Lattice vertex positions [(n+1)³, 3]; index = (i·(n+1) + j)·(n+1) + k for (x_i, y_j, z_k)."""
        t = torch.linspace(-self.radius, self.radius, self.side, device=self.device, dtype=dtype)
        x, y, z = torch.meshgrid(t, t, t, indexing="ij")
        return torch.stack([x, y, z], dim=-1).reshape(-1, 3)

    def boundary_mask(self) -> torch.Tensor:
        """[(n+1)³] bool, True on the outer faces of the grid (forced outside so meshes are closed)."""
        s = self.side
        i = torch.arange(s, device=self.device)
        b = (i == 0) | (i == s - 1)
        return (b[:, None, None] | b[None, :, None] | b[None, None, :]).reshape(-1)

    def vertex_index(self, ijk: torch.Tensor) -> torch.Tensor:
        s = self.side
        return (ijk[..., 0] * s + ijk[..., 1]) * s + ijk[..., 2]

    def cube_origins(self, cubes: torch.Tensor | None = None) -> torch.Tensor:
        """Lattice index of corner (0,0,0) of the given cubes (linear cube ids, default all)."""
        n = self.n
        if cubes is None:
            cubes = torch.arange(n**3, device=self.device)
        ci, cj, ck = cubes // (n * n), (cubes // n) % n, cubes % n
        return self.vertex_index(torch.stack([ci, cj, ck], dim=-1))

    def corner_offsets(self) -> torch.Tensor:
        """Linear index offset of each of the 8 cube corners [8]."""
        s = self.side
        c = CUBE_CORNERS.to(self.device)
        return (c[:, 0] * s + c[:, 1]) * s + c[:, 2]

    def direction_offsets(self) -> torch.Tensor:
        """Linear index offset of each of the 7 edge directions [7]."""
        s = self.side
        d = EDGE_DIRECTIONS.to(self.device)
        return (d[:, 0] * s + d[:, 1]) * s + d[:, 2]

    def tets(self, cubes: torch.Tensor | None = None) -> torch.Tensor:
        """Tet vertex indices [6·C, 4] (positively oriented) of the given cubes (default: all)."""
        base = self.cube_origins(cubes)
        corner = self.corner_offsets()[CUBE_TET_CORNERS.to(self.device)]  # [6,4]
        return (base[:, None, None] + corner[None]).reshape(-1, 4)

    def tet_edge_ids(self, cubes: torch.Tensor | None = None) -> torch.Tensor:
        """Global edge ids [6·C, 6] of the tets of the given cubes, matching :meth:`tets` row order."""
        base = self.cube_origins(cubes)
        start = self.corner_offsets()[CUBE_TET_EDGE_START.to(self.device)]  # [6,6]
        return ((base[:, None, None] + start[None]) * 7 + CUBE_TET_EDGE_DIR.to(self.device)[None]).reshape(-1, 6)

    def edge_endpoints(self, edge_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertex indices (a, b) of global edge ids."""
        a = edge_ids // 7
        return a, a + self.direction_offsets()[edge_ids % 7]

    def edges(self) -> torch.Tensor:
        """All unique grid edges [E, 2], enumerated analytically (7 directions per vertex, clipped)."""
        s = self.side
        ijk = torch.stack(torch.meshgrid(*(torch.arange(s, device=self.device),) * 3, indexing="ij"), -1).reshape(-1, 3)
        out = []
        for d in EDGE_DIRECTIONS.to(self.device):
            ok = ((ijk + d) < s).all(-1)
            a = self.vertex_index(ijk[ok])
            out.append(torch.stack([a, self.vertex_index(ijk[ok] + d)], -1))
        return torch.cat(out)
