"""Differentiable mesh rendering: one nvdiffrast-shaped interface, two backends.

``render_mesh`` gives mask / depth / disparity / normals / colour / UV / face id images for a batch
of cameras; ``get_backend`` gives the low-level rasterize / interpolate / texture / antialias ops.
The nvdiffrast backend is imported lazily (only when CUDA is used); see docs/RENDERING.md.
"""
from .backend import RenderBackend, get_backend
from .renderer import RenderOutput, render_mesh, vertex_normals

__all__ = ["RenderBackend", "RenderOutput", "get_backend", "render_mesh", "vertex_normals"]
