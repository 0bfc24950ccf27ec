"""core/texture/unwrap.py: surface patches and the patched xatlas atlas (docs/TEXTURE.md, unwrap.py)."""
from __future__ import annotations

import numpy as np
import torch

from idsculpt.core.camera import Cameras
from idsculpt.core.dmtet.procedural import procedural_head_mesh
from idsculpt.core.texture import fill_holes, rasterize_uv, render_textured, unwrap_uv
from idsculpt.core.render import render_mesh
from idsculpt.core.texture.project import erode
from idsculpt.core.texture.unwrap import MIN_PATCHES, surface_patches


def _head():
    m = procedural_head_mesh(40)  # ~16k faces: big enough for patches, small enough for CI
    assert m.faces.shape[0] >= MIN_PATCHES * 800
    return m


def _uv_stats(mesh, size: int) -> tuple[float, float]:
    """Texels per unit surface area at ``size``² and the 95th percentile of the per-face UV/3D area
    ratio (normalised: 1 = every face gets its share of the atlas)."""
    p = mesh.vertices[mesh.faces].double()
    q = mesh.uvs[mesh.uv_faces].double() * size
    a3 = 0.5 * torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]).norm(dim=-1)
    e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    a2 = 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs()
    ratio = (a2 / a2.sum()) / (a3 / a3.sum())
    return float(a2.sum() / a3.sum()), float(torch.quantile(ratio, 0.95))


def test_surface_patches_are_compact_balanced_and_deterministic() -> None:
    m = _head()
    v, f = m.vertices.numpy(), m.faces.numpy()
    labels = surface_patches(v, f, 800)
    assert np.array_equal(labels, surface_patches(v, f, 800))
    sizes = np.bincount(labels)
    k = round(len(f) / 800)
    assert len(sizes) == k and sizes.min() > 0.25 * 800 and sizes.max() < 3 * 800, sizes
    # compact: each patch spans a small part of the head (a patch of ~1/k of the area)
    cent = v[f].mean(1)
    spread = max(float(np.linalg.norm(cent[labels == i] - cent[labels == i].mean(0), axis=1).max()) for i in range(k))
    assert spread < 0.5 * float(np.linalg.norm(v.max(0) - v.min(0))), spread


def test_patched_atlas_keeps_the_mesh_and_beats_the_whole_mesh_unwrap() -> None:
    m = _head()
    whole, info_whole = unwrap_uv(m, 1024, patch_faces=None)
    patched, info = unwrap_uv(m, 1024)
    assert torch.equal(patched.faces, m.faces) and torch.equal(patched.vertices, m.vertices)
    assert patched.uv_faces.shape == m.faces.shape and int(patched.uv_faces.max()) == patched.uvs.shape[0] - 1
    assert bool(((patched.uvs >= 0) & (patched.uvs <= 1)).all())
    density_whole, stretch_whole = _uv_stats(whole, 1024)
    density, stretch = _uv_stats(patched, 1024)
    # the measured reason for patches: at least as many texels per unit area, no more area distortion
    assert density >= 0.95 * density_whole, (density, density_whole)
    assert stretch <= stretch_whole + 0.02, (stretch, stretch_whole)
    assert info.charts > 1 and info_whole.charts > 1


def test_patched_atlas_bakes_and_rerenders_surface_positions() -> None:
    """Known answer: bake each texel's 3D position into the texture and render it; the rendered "colour"
    must be the position of the surface seen there (a render with the vertex positions as vertex
    colours). A patch whose UVs were attached to the wrong faces would show a far-away position."""
    m = _head()
    cams = Cameras.orbit([0.0, 20.0, -10.0, 30.0], [0.0, 75.0, -120.0, 180.0], 3.0, 35.0, 128)
    truth = render_mesh(m.vertices, m.faces, cams, vertex_colors=m.vertices, antialias=True)
    inner = torch.stack([erode(truth.face_id[i] >= 0, 2) for i in range(len(cams))])
    assert inner.sum() > 5000
    off = {}
    for patch_faces in (None, 800):
        mesh, _ = unwrap_uv(m, 512, patch_faces=patch_faces)
        texels = rasterize_uv(mesh, 512)
        out, _ = render_textured(mesh, fill_holes(texels.position, texels.covered), cams)
        assert torch.equal(out.face_id, truth.face_id)
        err = (out.color - truth.color).norm(dim=-1)[inner]
        assert float(err.median()) < 1e-3
        # bilinear lookups next to a chart border reach into the gutter, which fill_holes grows from
        # the chart's own border (before that, ~1-2 % of these pixels read the neighbouring chart)
        off[patch_faces] = float((err > 0.05).float().mean())
    assert off[800] < 0.001 and off[None] < 0.001, off
