"""The head <-> core MESH bridge (nodes/core_mesh.py) against newer ComfyUI's textured MESH (review F3).

ComfyUI 0.3.64's MESH is geometry only. Newer releases export ``comfy_api.latest.Types.MESH`` with
uvs (glTF, v down), texture, normals, linear vertex colours and per-item counts for zero-padded
batches, and File3D types. ``TexturedMesh`` below is a stand-in with that constructor; the fixture
puts it where the newer host has it (``Types.MESH``).

Needs COMFYUI_PATH and ComfyUI's Python (skipped otherwise).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch

from idsculpt.core.mesh import HeadMesh
from test_comfy_mesh_nodes import textured_sphere

pytestmark = pytest.mark.comfy


class TexturedMesh:
    """Stand-in for newer ComfyUI's MESH (geometry_types.py@0b5657d4): same constructor parameters."""

    def __init__(self, vertices, faces, uvs=None, vertex_colors=None, texture=None, metallic_roughness=None,
                 vertex_counts=None, face_counts=None, unlit=False, normals=None, tangents=None, normal_map=None,
                 occlusion_in_mr=False, material=None, emissive=None):
        assert (vertex_counts is None) == (face_counts is None)
        self.vertices, self.faces, self.uvs, self.vertex_colors, self.texture = vertices, faces, uvs, vertex_colors, texture
        self.metallic_roughness, self.vertex_counts, self.face_counts, self.unlit = metallic_roughness, vertex_counts, face_counts, unlit
        self.normals, self.tangents, self.normal_map, self.occlusion_in_mr = normals, tangents, normal_map, occlusion_in_mr
        self.material, self.emissive = material, emissive


@pytest.fixture()
def newer_host(comfy_inprocess, monkeypatch):
    from comfy_api.latest import Types

    monkeypatch.setattr(Types, "MESH", TexturedMesh, raising=False)
    return TexturedMesh


def _bilinear(tex: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup at pixel coordinates (x right, y = row from the top, pixel centres at +0.5)."""
    h, w = tex.shape[:2]
    x, y = (x - 0.5).clamp(0, w - 1), (y - 0.5).clamp(0, h - 1)
    x0, y0 = x.floor().long().clamp(max=w - 2), y.floor().long().clamp(max=h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x0 + 1] * fx
    bottom = tex[y0 + 1, x0] * (1 - fx) + tex[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def sample_v_up(tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """OpenGL / HeadMesh convention: v = 0 is the bottom row."""
    return _bilinear(tex, uv[:, 0] * tex.shape[1], (1 - uv[:, 1]) * tex.shape[0])


def sample_v_down(tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """glTF / core MESH convention: v = 0 is the top row (what core's bakes and SaveGLB assume)."""
    return _bilinear(tex, uv[:, 0] * tex.shape[1], uv[:, 1] * tex.shape[0])


def _surface_points(n_faces: int, n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    face = torch.randint(0, n_faces, (n,), generator=g)
    w = torch.rand(n, 3, generator=g)
    return face, w / w.sum(1, keepdim=True)


def _head_points(head: HeadMesh, face, w) -> tuple[torch.Tensor, torch.Tensor]:
    pos = (head.vertices[head.faces[face]] * w[..., None]).sum(1)
    uv = (head.uvs[head.uv_faces[face]] * w[..., None]).sum(1)
    return pos, sample_v_up(head.texture, uv)


def test_textured_round_trip_keeps_uv_mapped_colour(newer_host) -> None:
    from idsculpt.nodes.core_mesh import core_mesh_textured, core_mesh_to_head, head_to_core_mesh

    assert core_mesh_textured()
    head = textured_sphere(seed=3)
    mesh = head_to_core_mesh(head)
    assert isinstance(mesh, TexturedMesh)
    n = mesh.vertices.shape[1]
    pairs = {(int(a), int(b)) for a, b in zip(head.faces.reshape(-1), head.uv_faces.reshape(-1))}
    assert n == len(pairs) > head.vertices.shape[0]  # split at the seam: one vertex per (position, UV)
    assert mesh.uvs.shape == (1, n, 2) and mesh.normals.shape == (1, n, 3) and mesh.texture.shape == (1, 16, 32, 3)
    assert torch.allclose(mesh.normals[0].norm(dim=-1), torch.ones(n), atol=1e-5)
    face, w = _surface_points(head.faces.shape[0])
    pos0, col0 = _head_points(head, face, w)
    # the MESH read as glTF: its v-down UVs find the same texels
    mf = mesh.faces[0][face]
    pos1 = (mesh.vertices[0][mf] * w[..., None]).sum(1)
    col1 = sample_v_down(mesh.texture[0], (mesh.uvs[0][mf] * w[..., None]).sum(1))
    assert torch.allclose(pos1, pos0, atol=1e-6) and (col1 - col0).abs().max() <= 1 / 255
    # a wrong convention would not: the flipped lookup lands elsewhere on this random texture
    assert (sample_v_up(mesh.texture[0], (mesh.uvs[0][mf] * w[..., None]).sum(1)) - col0).abs().max() > 0.1
    back = core_mesh_to_head(mesh)
    assert back.vertices.shape == head.vertices.shape and back.faces.shape == head.faces.shape  # welded again
    pos2, col2 = _head_points(back, face, w)
    assert torch.allclose(pos2, pos0, atol=1e-6) and (col2 - col0).abs().max() <= 1 / 255


def _pad(items: list[torch.Tensor]) -> torch.Tensor:
    out = torch.zeros(len(items), max(t.shape[0] for t in items), items[0].shape[1], dtype=items[0].dtype)
    for i, t in enumerate(items):
        out[i, :t.shape[0]] = t
    return out


def test_padded_batches_add_no_junk_faces(newer_host) -> None:
    from idsculpt.nodes.core_mesh import core_mesh_to_head, head_to_core_mesh

    small, big = head_to_core_mesh(textured_sphere(4, 6, seed=1)), head_to_core_mesh(textured_sphere(seed=2))
    vs, fs = [small.vertices[0], big.vertices[0]], [small.faces[0], big.faces[0]]
    counts = dict(vertex_counts=torch.tensor([len(vs[0]), len(vs[1])]), face_counts=torch.tensor([len(fs[0]), len(fs[1])]))
    batch = TexturedMesh(_pad(vs), _pad(fs), uvs=_pad([small.uvs[0], big.uvs[0]]), texture=torch.cat([small.texture, big.texture]),
                         **counts)
    for i, one in enumerate((small, big)):
        back = core_mesh_to_head(batch, i)
        alone = core_mesh_to_head(one)
        assert back.faces.shape == alone.faces.shape and torch.equal(back.vertices, alone.vertices)
        assert torch.equal(back.faces, alone.faces) and torch.equal(back.uvs[back.uv_faces], alone.uvs[alone.uv_faces])
        f = back.faces
        assert bool(((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])).all())  # no [0,0,0] padding faces
        assert torch.equal(back.texture, one.texture[0])
    # what the counts prevent: read without them, the small item gets the padding's degenerate faces
    uncounted = TexturedMesh(batch.vertices, batch.faces, uvs=batch.uvs, texture=batch.texture)
    junk = core_mesh_to_head(uncounted, 0).faces
    assert junk.shape[0] > len(fs[0]) and bool((junk[len(fs[0]):] == 0).all())
    # list-form meshes (accepted by core RotateMesh / MergeMeshes)
    listed = TexturedMesh(vs, fs, uvs=[small.uvs[0], big.uvs[0]], texture=batch.texture)
    assert torch.equal(core_mesh_to_head(listed, 1).faces, core_mesh_to_head(big).faces)


def test_vertex_colours_are_linear_in_core_mesh(newer_host) -> None:
    from idsculpt.nodes.core_mesh import core_mesh_to_head, head_to_core_mesh

    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    srgb = torch.tensor([[0.5, 0.0, 1.0], [0.04, 0.2, 0.8], [1.0, 1.0, 1.0], [0.25, 0.75, 0.1]])
    mesh = head_to_core_mesh(HeadMesh(v, f, vertex_colors=srgb))
    assert mesh.uvs is None and mesh.vertex_colors.shape == (1, 4, 3)
    assert abs(float(mesh.vertex_colors[0, 0, 0]) - 0.2140411) < 1e-6  # sRGB 0.5 -> linear (IEC 61966-2-1)
    assert abs(float(mesh.vertex_colors[0, 1, 0]) - 0.04 / 12.92) < 1e-7  # the linear segment
    back = core_mesh_to_head(mesh)
    assert torch.allclose(back.vertex_colors, srgb, atol=1e-5)


def test_on_0364_the_bridge_stays_geometry_only(comfy_inprocess) -> None:
    from idsculpt.nodes.core_mesh import core_mesh_class, core_mesh_textured, head_to_core_mesh

    cls = core_mesh_class()
    if core_mesh_textured(cls):
        pytest.skip("this ComfyUI's MESH carries UVs (covered by the tests above)")
    mesh = head_to_core_mesh(textured_sphere())
    assert type(mesh) is cls and set(vars(mesh)) == {"vertices", "faces"}


class _File3D:
    """Stand-in for newer ComfyUI's Types.File3D(source, file_format)."""

    def __init__(self, source: Any, file_format: str = "") -> None:
        self.source, self.format = source, file_format


def test_save_head_returns_file3d_where_the_host_has_it(comfy_inprocess, newer_host, monkeypatch) -> None:
    from comfy_api.latest import Types, io

    nodes = comfy_inprocess.load_pack_nodes()
    save = nodes["IDSculptSaveHead"]
    assert [o.display_name for o in save.define_schema().outputs] == ["model_file", "mesh"]  # 0.3.64

    @io.comfytype(io_type="FILE_3D_GLB")
    class File3DGLB(io.ComfyTypeIO):
        Type = Any

    monkeypatch.setattr(io, "File3DGLB", File3DGLB, raising=False)
    monkeypatch.setattr(Types, "File3D", _File3D, raising=False)
    outs = save.define_schema().outputs
    assert [o.display_name for o in outs] == ["model_file", "mesh", "model_3d"] and outs[2].io_type == "FILE_3D_GLB"
    out = comfy_inprocess.run_node(save, head=textured_sphere(), filename_prefix="file3d/head", save_obj=False)
    model_file, mesh, f3d = out.args
    assert isinstance(mesh, TexturedMesh) and mesh.texture is not None
    assert isinstance(f3d, _File3D) and f3d.format == "glb"
    assert f3d.source == os.path.join(comfy_inprocess.folder_paths.get_output_directory(), model_file)
    assert os.path.isfile(f3d.source)
