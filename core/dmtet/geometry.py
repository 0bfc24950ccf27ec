"""Learnable DMTet geometry: an SDF value and a bounded offset per tet-grid vertex."""
from __future__ import annotations

import torch

from ..mesh import HeadMesh
from .grid import TetGrid
from .marching_tets import marching_tets

# Largest offset as a fraction of the cell size: threestudio bounds each coordinate by tanh at 1/res on
# its [0,1] grid ("half tet size is approximately 1/resolution"), and its Quartet "res" grids have about
# res/2 cells per side (tested on its 32_tets: 5034 ≈ 17³ vertices), i.e. half a cell. At this bound a
# Kuhn tet (shortest altitude h/√2) can invert, as threestudio's can; marching tets then emits that tet's
# triangles reversed. Fractions below h/(2√2) ≈ 0.35 h never invert (an option, not the authors').
DEFAULT_DEFORM_FRACTION = 0.5
MAX_DEFORM_FRACTION = 0.5


class DMTetGeometry(torch.nn.Module):
    """SDF [(n+1)³] + deformation [(n+1)³,3] on a regular tet grid.

    positions = grid vertices + deform_fraction · cell · tanh(deformation): tanh bounds the offset
    while keeping a gradient everywhere. The outer layer of grid vertices is forced outside
    (SDF ≥ a small positive value) so the extracted surface is always closed.
    """

    def __init__(self, grid: TetGrid, sdf: torch.Tensor | None = None, deform_fraction: float = DEFAULT_DEFORM_FRACTION):
        super().__init__()
        self.grid = grid
        self.deform_fraction = float(deform_fraction)
        if not 0 <= self.deform_fraction <= MAX_DEFORM_FRACTION:
            raise ValueError(f"deform_fraction must be in [0, {MAX_DEFORM_FRACTION}] of a cell (the authors' bound is 0.5), "
                             f"got {deform_fraction}")
        dev = grid.device
        if sdf is None:
            sdf = torch.ones(grid.num_vertices, device=dev)
        if sdf.shape != (grid.num_vertices,):
            raise ValueError(f"initial SDF must have one value per grid vertex ({grid.num_vertices}), got {tuple(sdf.shape)}")
        self.sdf = torch.nn.Parameter(sdf.detach().float().clone().to(dev))
        self.deformation = torch.nn.Parameter(torch.zeros(grid.num_vertices, 3, device=dev))
        self.register_buffer("base_positions", grid.vertices().to(dev), persistent=False)
        self.register_buffer("boundary", grid.boundary_mask().to(dev), persistent=False)

    @staticmethod
    def from_sdf_fn(grid: TetGrid, fn, **kw) -> "DMTetGeometry":
        return DMTetGeometry(grid, fn(grid.vertices()).float(), **kw)

    def positions(self) -> torch.Tensor:
        return self.base_positions + self.deform_fraction * self.grid.cell_size * torch.tanh(self.deformation)

    def effective_sdf(self) -> torch.Tensor:
        eps = 1e-4 * self.grid.cell_size
        return torch.where(self.boundary, self.sdf.clamp_min(eps), self.sdf)

    def extract(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current isosurface (vertices [V,3] differentiable, faces [F,3] int64, outward)."""
        return marching_tets(self.grid, self.positions(), self.effective_sdf())

    def to_head_mesh(self) -> HeadMesh:
        v, f = self.extract()
        return HeadMesh(v.detach().float().cpu(), f.cpu())
