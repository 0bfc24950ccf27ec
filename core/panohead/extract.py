"""Stage-1 outputs from an inverted PanoHead: the initial mesh and the 40 GAN views.

Mesh (ID-Sculpt ``pre_gen_multiview.py``): raw density sigma sampled on an N³ grid spanning the
tri-grid box, a border of ``int(30·N/256)`` voxels (60 at 512³) forced to -1000 so the surface
closes, marching cubes at sigma = 20. The grid is indexed [x, y, z] in PanoHead's world, which
*is* ``core.camera``'s world (+y up, face toward +z; checked by the tests), so vertices need no
axis change — the original's flip/transpose only serves its .ply writer. The largest connected
component is kept (floaters in hair are common).

GAN views: 40 cameras at yaw 0..351° step 9°, pitch -5°, radius 2.7, looking at the origin,
intrinsics from PanoHead's ``FOV_to_intrinsics(25)`` (focal = 1/(1.414·tan 12.5°) — that helper's
own formula, i.e. a true vertical FoV of ≈17.8°, not 25°). Normals: -∇sigma by central
differences, composited along the ray with the volume-rendering weights (world frame); masks:
accumulated opacity ≥ 250/255, largest 8-connected component (as ID-Sculpt saves them).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

import torch.nn.functional as F

from ..camera import Cameras
from ..mesh import HeadMesh
from ..stage_types import GanViews, InterruptFn, ProgressFn
from .triplane import TriPlaneGenerator


@torch.no_grad()
def density_grid(G: TriPlaneGenerator, planes: torch.Tensor, resolution: int = 512, chunk: int = 1 << 20,
                 interrupt: Optional[InterruptFn] = None) -> torch.Tensor:
    """Raw density [N,N,N] (float32, on the planes' device) at grid points [x,y,z] spanning the box,
    evaluated ``chunk`` points at a time (one z-slab batch) so memory stays bounded."""
    if resolution < 8:
        raise ValueError(f"mesh resolution must be >= 8, got {resolution}")
    dev = planes.device
    box = float(G.rendering_kwargs["box_warp"])
    lin = torch.linspace(-box / 2, box / 2, resolution, device=dev)
    out = torch.empty((resolution, resolution, resolution), dtype=torch.float32, device=dev)
    per_x = resolution * resolution
    xs_per_chunk = max(1, chunk // per_x)
    yy, zz = torch.meshgrid(lin, lin, indexing="ij")
    yz = torch.stack([yy.reshape(-1), zz.reshape(-1)], -1)
    for x0 in range(0, resolution, xs_per_chunk):
        if interrupt is not None:
            interrupt()
        xs = lin[x0: x0 + xs_per_chunk]
        pts = torch.cat([xs[:, None, None].expand(-1, per_x, 1), yz[None].expand(len(xs), -1, -1)], -1).reshape(1, -1, 3)
        sigma = G.renderer.density(planes[:1], G.decoder, pts, G.rendering_kwargs)
        out[x0: x0 + len(xs)] = sigma.reshape(len(xs), resolution, resolution).float()
    return out


def _largest_component(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    face_label = labels[faces[:, 0]]
    best = np.bincount(face_label).argmax()
    keep_f = faces[face_label == best]
    used = np.unique(keep_f)
    remap = -np.ones(n, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[keep_f]


def _surface_box(g: torch.Tensor, level: float) -> Optional[tuple[slice, slice, slice]]:
    """The index box of the cubes marching cubes can emit triangles in: every voxel above ``level``
    grown by one voxel on each side (a cube straddling the box's face has one corner inside), clamped
    to the grid. Cubes outside it have all eight corners at or below the level and emit nothing, so
    marching the box alone gives the same triangles, in the same order, shifted by its corner.
    None: nothing above the level."""
    above = g > level
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(above.any(dim=other[1]).any(dim=other[0])).flatten()
        if hit.numel() == 0:
            return None
        lo, hi = int(hit[0]) - 1, int(hit[-1]) + 1
        box.append(slice(max(lo, 0), min(hi, g.shape[axis] - 1) + 1))
    return tuple(box)


def mesh_from_grid(grid: torch.Tensor | np.ndarray, box: float, level: float = 20.0, border: Optional[int] = None,
                   largest_component: bool = True) -> HeadMesh:
    """Marching cubes of a density grid [N,N,N] (indexed x,y,z over [-box/2, box/2]³) -> HeadMesh
    in the world frame, faces counter-clockwise seen from outside (outward normals).

    Only the box around the voxels above ``level`` is copied to the CPU and marched (a head fills a
    fraction of PanoHead's box; the border alone is 2·60 of 512 voxels per axis): the same mesh as
    marching the whole grid, in a fraction of the time (tests/test_panohead_extract.py)."""
    from skimage.measure import marching_cubes

    g = grid.detach().float() if isinstance(grid, torch.Tensor) else torch.from_numpy(np.asarray(grid, dtype=np.float32))
    n = g.shape[0]
    g = torch.nan_to_num(g, nan=-1000.0, posinf=1000.0, neginf=-1000.0)
    pad = int(30 * n / 256) if border is None else int(border)
    pad = max(pad, 1)  # at least one empty voxel on every side: the surface is always closed
    g[:pad], g[-pad:] = -1000, -1000
    g[:, :pad], g[:, -pad:] = -1000, -1000
    g[:, :, :pad], g[:, :, -pad:] = -1000, -1000
    crop = _surface_box(g, level)
    if crop is None:
        raise RuntimeError(f"the density never exceeds the marching-cubes level {level}: nothing to mesh "
                           "(inversion failed, or the level is too high for this generator); lower the mesh level, or set the "
                           "PanoHead Invert node's init to 'template' to start from the template head")
    step = box / (n - 1)
    sub = g[crop].cpu().numpy()
    verts, faces, _, _ = marching_cubes(sub, level=level, spacing=(step, step, step), gradient_direction="descent")
    verts = verts + np.array([c.start for c in crop], dtype=verts.dtype) * step - box / 2
    # skimage orders triangles clockwise seen from the low-value side for 'descent'; we want CCW from outside
    faces = faces[:, [0, 2, 1]].astype(np.int64)
    if largest_component:
        verts, faces = _largest_component(verts, faces)
    return HeadMesh(torch.from_numpy(np.ascontiguousarray(verts, dtype=np.float32)), torch.from_numpy(faces))


def extract_mesh(G: TriPlaneGenerator, ws: Optional[torch.Tensor] = None, planes: Optional[torch.Tensor] = None,
                 resolution: int = 512, level: float = 20.0, chunk: int = 1 << 20,
                 interrupt: Optional[InterruptFn] = None) -> HeadMesh:
    """The initial head mesh of stage 1 from W+ codes (or precomputed tri-grid ``planes``)."""
    with torch.no_grad():
        if planes is None:
            if ws is None:
                raise ValueError("extract_mesh needs ws or planes")
            planes = G.planes(ws, noise_mode="const")
        grid = density_grid(G, planes, resolution, chunk, interrupt)
    return mesh_from_grid(grid, float(G.rendering_kwargs["box_warp"]), level)


# ------------------------------------------------------------------------------------ GAN views
def panohead_focal(fov_degrees: float) -> float:
    """Normalised focal of PanoHead's ``FOV_to_intrinsics`` (its own 1.414 factor included)."""
    return float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))


def gan_view_cameras(n_views: int = 40, pitch: float = -5.0, fov: float = 25.0, radius: float = 2.7,
                     resolution: int = 512) -> Cameras:
    """The 40 supervision cameras: yaw 0, 9, ..., 351° (0 = frontal, +90 = our azimuth +90, the
    subject's left), pitch -5° in PanoHead's ``LookAtPoseSampler(pi/2 + yaw, pi/2 + pitch)`` sense,
    whose polar mapping puts the camera at elevation asin(10/180) ≈ +3.2° (slightly above)."""
    yaw = np.arange(n_views) * (360.0 / n_views)
    cams = []
    for y in yaw:
        h = math.pi / 2 + math.radians(float(y))
        v = math.pi / 2 + math.radians(pitch)
        v = min(max(v, 1e-5), math.pi - 1e-5) / math.pi
        phi = math.acos(1 - 2 * v)
        # PanoHead's LookAtPoseSampler: x = r sin(phi) cos(pi - h), z = r sin(phi) sin(pi - h), y = r cos(phi)
        eye = torch.tensor([[radius * math.sin(phi) * math.cos(math.pi - h), radius * math.cos(phi),
                             radius * math.sin(phi) * math.sin(math.pi - h)]])
        cams.append(eye)
    from ..camera import look_at

    eye = torch.cat(cams)
    focal = panohead_focal(fov)
    true_fov = math.degrees(2 * math.atan(0.5 / focal))
    return Cameras(look_at(eye), torch.full((n_views,), true_fov), resolution, resolution)


def _largest_cc_mask(m: np.ndarray) -> np.ndarray:
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(m, dtype=np.float32)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.float32)


@torch.no_grad()
def render_gan_views(G: TriPlaneGenerator, ws: Optional[torch.Tensor] = None, planes: Optional[torch.Tensor] = None,
                     cameras: Optional[Cameras] = None, resolution: int = 256, ray_start: Optional[float] = 2.2,
                     batch: int = 1, seed: int = 0, progress: Optional[ProgressFn] = None,
                     interrupt: Optional[InterruptFn] = None) -> GanViews:
    """Normals + masks of the (inverted) generator from the GAN-view cameras at ``resolution``².

    ``ray_start`` 2.2 is ID-Sculpt's near plane for these renders (the release trains with 2.25)."""
    if planes is None:
        if ws is None:
            raise ValueError("render_gan_views needs ws or planes")
        planes = G.planes(ws, noise_mode="const")
    dev = planes.device
    cams = (cameras or gan_view_cameras()).with_resolution(resolution).to(dev)
    labels = cams.eg3d_label()
    opts = dict(G.rendering_kwargs)
    if ray_start is not None:
        opts["ray_start"] = ray_start
    gen = torch.Generator(device=dev).manual_seed(seed)
    normals, masks, colors = [], [], []
    for i in range(0, len(cams), batch):
        if interrupt is not None:
            interrupt()
        c = labels[i: i + batch]
        o, d = G.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), resolution)
        feats, _, wsum = G.renderer(planes[:1].expand(len(c), -1, -1, -1, -1), G.decoder, o, d, opts, with_normals=True,
                                    generator=gen)
        nrm = F.normalize(feats[..., -3:], dim=-1).reshape(len(c), resolution, resolution, 3)
        rgb = feats[..., :3].reshape(len(c), resolution, resolution, 3)
        if G.decoder.activation == "sigmoid":
            rgb = rgb.clamp(0, 1)
        mask_raw = (wsum * (1 + 2 * 0.001) - 0.001).reshape(len(c), resolution, resolution)
        for k in range(len(c)):
            m = _largest_cc_mask((mask_raw[k].clamp(0, 1) * 255 >= 250).cpu().numpy())
            mt = torch.from_numpy(m).to(dev)[..., None]
            masks.append(mt)
            normals.append(nrm[k] * mt)
            colors.append(rgb[k] * mt)
        if progress is not None:
            progress(min(i + batch, len(cams)), len(cams), None)
    return GanViews(cams.with_resolution(resolution), torch.stack(normals).cpu(), torch.stack(masks).cpu(),
                          torch.stack(colors).cpu())
