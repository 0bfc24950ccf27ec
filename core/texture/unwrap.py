"""UV unwrapping with xatlas, in bounded time.

xatlas' chart computation grows faster than linearly with the face count (measured here: 0.25 s at 5k
faces, 2.2 s at 20k, 7.5 s at 50k on the 2-core CI machine), and a 512-resolution DMTet surface can
hold several hundred thousand faces. So a mesh above ``max_faces`` is first decimated with
fast-simplification (quadric edge collapse) to ``max_faces``; the textured head is then that
decimated mesh (``UnwrapInfo.decimated`` says so and the node reports it). Texture detail lives in the
texture, and at 1024² texels a ~100k-face head keeps sub-texel geometric error at viewing distance.

Surface patches: xatlas' chart growing is superlinear in the size of one connected mesh, and on a
sculpted head it ends with thousands of small, stretched charts anyway (100k-face head, 2-core machine:
22 s, 3,368 charts). So the surface is first cut into compact patches of ~``patch_faces`` faces
(area-weighted k-means on face centroids, seeded by farthest-point sampling: deterministic) and every
patch is handed to xatlas as its own mesh; xatlas charts them independently (in parallel on several
cores) and packs all charts into one atlas. On that head with 128 patches: 1.95 s, 960 charts, 41 % more
texels per unit area and less area distortion (95th percentile of per-face UV/3D area ratio 1.035 vs
1.18) — small patches are nearly developable, so xatlas flattens each with little stretch.

The atlas is packed for the requested texture size with a padding of a few texels between charts, so
seam dilation (see project.fill_holes) has room and bilinear lookups never mix two charts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..mesh import HeadMesh, decimate
from ..stage_types import InterruptFn
from .xatlas_process import generate_atlas

ALLOWED_TEXTURE_SIZES = (256, 512, 1024, 2048)
# Below this many patches' worth of faces the mesh is unwrapped whole: xatlas alone is fast there
# (< 1 s at 8k faces) and patch boundaries would only add seams.
MIN_PATCHES = 8


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


def surface_patches(vertices: np.ndarray, faces: np.ndarray, patch_faces: int, iterations: int = 8) -> np.ndarray:
    """Patch label [F] of every face: ~``patch_faces`` faces per patch, compact (see module docstring).

    Area-weighted Lloyd iterations on the face centroids from farthest-point seeds; deterministic.
    """
    nf = faces.shape[0]
    k = max(1, int(round(nf / max(int(patch_faces), 1))))
    if k == 1:
        return np.zeros(nf, np.int64)
    tri = vertices[faces]
    cent = tri.mean(1).astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).astype(np.float64) + 1e-20
    seeds = np.empty((k, 3))
    seeds[0] = cent[int(np.argmax(((cent - cent.mean(0)) ** 2).sum(1)))]
    d2 = ((cent - seeds[0]) ** 2).sum(1)
    for i in range(1, k):  # farthest-point sampling: spread seeds, no randomness
        seeds[i] = cent[int(np.argmax(d2))]
        d2 = np.minimum(d2, ((cent - seeds[i]) ** 2).sum(1))
    labels = np.zeros(nf, np.int64)
    chunk = max(1, 2**24 // k)  # bounds the [faces, k] distance block at ~128 MB
    for _ in range(iterations):
        for s in range(0, nf, chunk):
            c = cent[s : s + chunk]
            labels[s : s + chunk] = ((c * c).sum(1)[:, None] - 2 * c @ seeds.T + (seeds * seeds).sum(1)[None]).argmin(1)
        w = np.bincount(labels, area, k)
        moved = np.stack([np.bincount(labels, area * cent[:, j], k) for j in range(3)], 1)
        keep = w > 0
        seeds[keep] = moved[keep] / w[keep, None]
    return labels


def unwrap_uv(mesh: HeadMesh, texture_size: int = 1024, max_faces: int = 100_000, padding: int | None = None,
              max_chart_area_fraction: float | None = None, patch_faces: int | None = 800,
              interrupt: Optional[InterruptFn] = None) -> tuple[HeadMesh, UnwrapInfo]:
    """A copy of ``mesh`` (decimated first when above ``max_faces``) with xatlas UVs and a grey texture.

    UVs follow core.mesh: u right, v up. ``padding`` (texels between charts) defaults to size/256 (≥ 2).
    ``max_chart_area_fraction``: largest chart as a fraction of the mesh's surface area (None = xatlas'
    unbounded default). Why: on a smooth closed head xatlas otherwise grows a handful of huge charts
    whose parameterisation dominates the time (81,920-face ellipsoid, 2-core machine: 69.6 s with 6
    charts, 4.4 s with 139 charts at 0.01, similar atlas utilisation); seams are padded and dilated
    (project.fill_holes), so the extra charts cost texels, not visible seams.
    ``patch_faces``: faces per surface patch handed to xatlas (module docstring); None, or a mesh of
    fewer than ``MIN_PATCHES`` patches' worth of faces, is unwrapped whole (xatlas' own behaviour).
    xatlas runs in a child process (xatlas_process: bounded time, ``interrupt`` polled while it works).
    """
    texture_size = check_texture_size(texture_size)
    if mesh.faces.shape[0] == 0:
        raise ValueError("the mesh has no faces: nothing to unwrap (check the geometry stage's output)")
    if max_faces < 100:
        raise ValueError(f"max_faces={max_faces} is too small for a head: use at least a few thousand")
    if patch_faces is not None and patch_faces < 50:
        raise ValueError(f"patch_faces={patch_faces} is too small: use a few hundred faces per patch (or None)")
    if max_chart_area_fraction is not None and not 0 < max_chart_area_fraction <= 1:
        raise ValueError(f"max_chart_area_fraction must be in (0, 1] (or None for no limit), got {max_chart_area_fraction}")
    t0 = time.perf_counter()
    faces_in = int(mesh.faces.shape[0])
    work = decimate(mesh, max_faces)
    v = work.vertices.detach().cpu().numpy().astype(np.float32)
    f = work.faces.detach().cpu().numpy().astype(np.uint32)

    if patch_faces is not None and len(f) >= MIN_PATCHES * patch_faces:
        labels = surface_patches(v, f, patch_faces)
    else:
        labels = np.zeros(len(f), np.int64)
    fi = f.astype(np.int64)
    patch_rows = []  # (face rows, patch-local vertex ids -> mesh vertex ids)
    patch_meshes = []  # what xatlas charts: each patch as a mesh of its own
    for p in np.unique(labels):
        rows = np.flatnonzero(labels == p)
        used, local = np.unique(fi[rows], return_inverse=True)
        patch_meshes.append((v[used], local.reshape(-1, 3).astype(np.uint32)))
        patch_rows.append((rows, used))
    max_chart_area = 0.0  # xatlas' unbounded default
    if max_chart_area_fraction is not None:
        tri = v[fi]
        area = 0.5 * float(np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())
        max_chart_area = float(max_chart_area_fraction) * area  # xatlas takes the limit in mesh units²
    options = {"max_chart_area": max_chart_area, "resolution": texture_size,
               "padding": int(padding if padding is not None else max(2, texture_size // 256)), "bilinear": True}
    parts, charts = generate_atlas(patch_meshes, options, interrupt)
    # xatlas keeps each patch's face order; its vertices are the patch's vertices split at seams
    uv_parts, uv_faces, offset = [], np.empty_like(fi), 0
    for (rows, used), (vmapping, indices, uvs) in zip(patch_rows, parts, strict=True):  # one UV set per patch
        indices = indices.astype(np.int64)
        if indices.shape != (len(rows), 3) or not np.array_equal(used[vmapping.astype(np.int64)[indices]], fi[rows]):
            raise RuntimeError("xatlas changed the face order or topology; cannot attach its UVs to the mesh")
        uv_faces[rows] = indices + offset
        uv_parts.append(uvs)
        offset += len(uvs)
    uvs = np.concatenate(uv_parts)
    out = HeadMesh(
        work.vertices.detach().cpu().clone(),
        work.faces.detach().cpu().clone(),
        torch.from_numpy(np.ascontiguousarray(uvs, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(uv_faces)),
        texture=torch.full((texture_size, texture_size, 3), 0.5),
    )
    info = UnwrapInfo(faces_in, int(f.shape[0]), faces_in != int(f.shape[0]), charts, time.perf_counter() - t0, texture_size)
    return out, info
