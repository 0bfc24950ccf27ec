"""DMTet (stage 2 geometry): regular tet grid, mesh → SDF init, differentiable marching tets,
learnable SDF + bounded deformation, and mesh regularisers."""
from .geometry import DEFAULT_DEFORM_FRACTION, DMTetGeometry
from .grid import TetGrid
from .marching_tets import marching_tets
from .procedural import head_sdf, procedural_head_mesh, sphere_sdf
from .regularizers import laplacian_loss, mesh_edges, normal_consistency_loss
from .sdf_init import (MeshNormalization, WindingNumber, axis_rotation, chamfer_distance, mesh_sdf_on_grid, normalize_mesh,
                       point_mesh_distance, sample_surface)

__all__ = [
    "DEFAULT_DEFORM_FRACTION", "DMTetGeometry", "TetGrid", "marching_tets",
    "head_sdf", "procedural_head_mesh", "sphere_sdf",
    "laplacian_loss", "mesh_edges", "normal_consistency_loss",
    "MeshNormalization", "WindingNumber", "axis_rotation", "chamfer_distance", "mesh_sdf_on_grid", "normalize_mesh",
    "point_mesh_distance", "sample_surface",
]
