"""UV unwrapping with xatlas, in bounded time.

xatlas' chart computation grows faster than linearly with the face count (measured here: 0.25 s at 5k
faces, 2.2 s at 20k, 7.5 s at 50k on the 2-core CI machine), and a 512-resolution DMTet surface can
hold several hundred thousand faces. So a mesh above ``max_faces`` is first decimated with
fast-simplification (quadric edge collapse) to ``max_faces``; the textured head is then that
decimated mesh (``UnwrapInfo.decimated`` says so and the node reports it). Texture detail lives in the
texture, and at 1024² texels a ~100k-face head keeps sub-texel geometric error at viewing distance.

The atlas is packed for the requested texture size with a padding of a few texels between charts, so
seam dilation (see project.fill_holes) has room and bilinear lookups never mix two charts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..mesh import HeadMesh, decimate

ALLOWED_TEXTURE_SIZES = (256, 512, 1024, 2048)


@dataclass
class UnwrapInfo:
    faces_in: int
    faces_out: int
    decimated: bool
    charts: int
    seconds: float
    texture_size: int

    def summary(self) -> str:
        dec = f"decimated {self.faces_in} → {self.faces_out} faces, " if self.decimated else f"{self.faces_out} faces, "
        return f"UV unwrap: {dec}{self.charts} charts, {self.texture_size}² texture, {self.seconds:.1f} s"


def check_texture_size(texture_size: int) -> int:
    if int(texture_size) not in ALLOWED_TEXTURE_SIZES:
        raise ValueError(f"texture size {texture_size} is not supported: use one of {ALLOWED_TEXTURE_SIZES} (1024 is the default, 2048 for close-ups)")
    return int(texture_size)


def unwrap_uv(mesh: HeadMesh, texture_size: int = 1024, max_faces: int = 100_000, padding: int | None = None,
              max_chart_area_fraction: float | None = None) -> tuple[HeadMesh, UnwrapInfo]:
    """A copy of ``mesh`` (decimated first when above ``max_faces``) with xatlas UVs and a grey texture.

    UVs follow core.mesh: u right, v up. ``padding`` (texels between charts) defaults to size/256 (≥ 2).
    ``max_chart_area_fraction``: largest chart as a fraction of the mesh's surface area (None = xatlas'
    unbounded default). Why: on a smooth closed head xatlas otherwise grows a handful of huge charts
    whose parameterisation dominates the time (81,920-face ellipsoid, 2-core machine: 69.6 s with 6
    charts, 4.4 s with 139 charts at 0.01, similar atlas utilisation); seams are padded and dilated
    (project.fill_holes), so the extra charts cost texels, not visible seams.
    """
    import xatlas

    texture_size = check_texture_size(texture_size)
    if mesh.faces.shape[0] == 0:
        raise ValueError("the mesh has no faces: nothing to unwrap (check the geometry stage's output)")
    if max_faces < 100:
        raise ValueError(f"max_faces={max_faces} is too small for a head: use at least a few thousand")
    t0 = time.perf_counter()
    faces_in = int(mesh.faces.shape[0])
    work = decimate(mesh, max_faces)
    v = work.vertices.detach().cpu().numpy().astype(np.float32)
    f = work.faces.detach().cpu().numpy().astype(np.uint32)

    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    chart_options = xatlas.ChartOptions()
    if max_chart_area_fraction is not None:
        if not 0 < max_chart_area_fraction <= 1:
            raise ValueError(f"max_chart_area_fraction must be in (0, 1] (or None for no limit), got {max_chart_area_fraction}")
        tri = v[f.astype(np.int64)]
        area = 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())
        if area > 0:  # xatlas takes the limit in mesh units², so scale it to the mesh
            chart_options.max_chart_area = float(max_chart_area_fraction) * area
    pack_options = xatlas.PackOptions()
    pack_options.resolution = texture_size
    pack_options.padding = int(padding if padding is not None else max(2, texture_size // 256))
    pack_options.bilinear = True
    atlas.generate(chart_options, pack_options)
    vmapping, indices, uvs = atlas[0]
    indices = indices.astype(np.int64)
    # xatlas keeps the input face order; its vertices are the input vertices split at seams
    faces_back = vmapping.astype(np.int64)[indices]
    if faces_back.shape != f.shape or not np.array_equal(faces_back, f.astype(np.int64)):
        raise RuntimeError("xatlas changed the face order or topology; cannot attach its UVs to the mesh")
    out = HeadMesh(
        work.vertices.detach().cpu().clone(),
        work.faces.detach().cpu().clone(),
        torch.from_numpy(np.ascontiguousarray(uvs, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(indices)),
        texture=torch.full((texture_size, texture_size, 3), 0.5),
    )
    info = UnwrapInfo(faces_in, int(f.shape[0]), faces_in != int(f.shape[0]), int(atlas.chart_count), time.perf_counter() - t0, texture_size)
    return out, info
