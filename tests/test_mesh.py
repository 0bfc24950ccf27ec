import numpy as np
import torch

from idsculpt.core.mesh import HeadMesh


def _textured_cube() -> HeadMesh:
    import trimesh

    box = trimesh.creation.box()
    v = torch.tensor(box.vertices, dtype=torch.float32)
    f = torch.tensor(box.faces)
    # per-corner UVs that differ between faces sharing a vertex: seams everywhere
    uvs = torch.rand(f.numel(), 2, generator=torch.Generator().manual_seed(0))
    ft = torch.arange(f.numel()).reshape(-1, 3)
    tex = torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(1))
    tex = (tex * 255).round() / 255  # 8-bit exact
    return HeadMesh(v, f, uvs, ft, tex)


def _corner_uvs(m: HeadMesh) -> dict:
    out = {}
    for fi in range(m.faces.shape[0]):
        key = tuple(sorted(tuple(np.round(m.vertices[m.faces[fi, k]].numpy(), 6)) for k in range(3)))
        out[key] = {tuple(np.round(m.vertices[m.faces[fi, k]].numpy(), 6)): m.uvs[m.uv_faces[fi, k]].numpy() for k in range(3)}
    return out


def test_glb_round_trip_keeps_uvs_and_texture(tmp_path):
    m = _textured_cube()
    path = m.save(str(tmp_path / "cube.glb"))
    back = HeadMesh.load(path)
    assert back.vertices.shape == m.vertices.shape and back.faces.shape == m.faces.shape
    assert torch.equal(back.texture, m.texture)
    a, b = _corner_uvs(m), _corner_uvs(back)
    assert a.keys() == b.keys()
    for key in a:
        for vk in a[key]:
            np.testing.assert_allclose(a[key][vk], b[key][vk], atol=1e-6)


def test_obj_round_trip(tmp_path):
    m = _textured_cube()
    m.save(str(tmp_path / "cube.obj"))
    assert (tmp_path / "cube.mtl").exists() and (tmp_path / "cube.png").exists()
    back = HeadMesh.load(str(tmp_path / "cube.obj"))
    assert back.faces.shape == m.faces.shape
    assert torch.equal(back.texture, m.texture)
    a, b = _corner_uvs(m), _corner_uvs(back)
    for key in a:
        for vk in a[key]:
            np.testing.assert_allclose(a[key][vk], b[key][vk], atol=1e-6)


def test_vertex_normals_of_sphere_point_outward():
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=3)
    m = HeadMesh(torch.tensor(s.vertices), torch.tensor(s.faces))
    n = m.vertex_normals()
    cos = (n * torch.nn.functional.normalize(m.vertices, dim=-1)).sum(-1)
    assert cos.min() > 0.99
    assert abs(m.area() - 4 * np.pi) / (4 * np.pi) < 0.02


def test_untextured_glb_round_trip(tmp_path):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=2)
    m = HeadMesh(torch.tensor(s.vertices), torch.tensor(s.faces))
    back = HeadMesh.load(m.save(str(tmp_path / "s.glb")))
    assert back.vertices.shape == m.vertices.shape
    assert back.faces.shape == m.faces.shape


def test_glb_carries_smooth_vertex_normals(tmp_path):
    import pygltflib
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=2)
    m = HeadMesh(torch.tensor(s.vertices), torch.tensor(s.faces))
    path = m.save(str(tmp_path / "s.glb"))
    gltf = pygltflib.GLTF2().load(path)
    assert gltf.meshes[0].primitives[0].attributes.NORMAL is not None


def test_glb_extras_round_trip_keeps_the_mesh(tmp_path):
    """asset.extras written into a saved GLB come back, and the mesh (positions, UVs, texture) is unchanged."""
    import pytest
    import trimesh

    from idsculpt.core.mesh import read_glb_extras, write_glb_extras

    m = _textured_cube()
    path = m.save(str(tmp_path / "cube.glb"))
    assert read_glb_extras(path) == {}
    label = [float(i) / 7 for i in range(25)]
    write_glb_extras(path, {"idsculpt_reference_camera": {"eg3d_label": label, "height": 512, "width": 512}})
    write_glb_extras(path, {"other": 1})  # merged, not replaced
    extras = read_glb_extras(path)
    assert extras["idsculpt_reference_camera"]["eg3d_label"] == label and extras["other"] == 1
    back = HeadMesh.load(path)
    ref = HeadMesh.load(m.save(str(tmp_path / "plain.glb")))
    assert torch.equal(back.vertices, ref.vertices) and torch.equal(back.faces, ref.faces)
    assert torch.equal(back.uvs, ref.uvs) and torch.equal(back.texture, ref.texture)
    with open(path, "rb") as fh:
        assert len(fh.read()) % 4 == 0  # the GLB stays 4-byte aligned
    assert isinstance(trimesh.load(path), trimesh.Scene)
    (tmp_path / "x.glb").write_bytes(b"not a glb file at all")
    with pytest.raises(ValueError, match="not a glTF 2.0 binary"):
        read_glb_extras(str(tmp_path / "x.glb"))
