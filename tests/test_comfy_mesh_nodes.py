"""Foundation mesh nodes through a real ComfyUI (HTTP API, API-format prompts).

Load Head -> Save Head writes a textured GLB into output/ that loads back with trimesh with the same
geometry, UVs and texture pixels; Save Head's path is accepted by core Preview3D; Head <-> core MESH
round trips through core SaveGLB. Needs COMFYUI_PATH; skipped otherwise.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import comfy_harness as ch
from idsculpt.core.mesh import HeadMesh

pytestmark = pytest.mark.comfy


def textured_sphere(n_lat: int = 8, n_lon: int = 12, seed: int = 0) -> HeadMesh:
    """A UV sphere with a real UV seam (per-corner UVs: welded positions, split UVs) and a random texture."""
    lat = np.linspace(0.0, np.pi, n_lat + 1)
    lon = np.linspace(0.0, 2 * np.pi, n_lon + 1)
    grid_lat, grid_lon = np.meshgrid(lat, lon, indexing="ij")
    pos = np.stack([np.sin(grid_lat) * np.sin(grid_lon), np.cos(grid_lat), np.sin(grid_lat) * np.cos(grid_lon)], -1).reshape(-1, 3)
    pos = np.round(pos, 6).astype(np.float32)  # so seam/pole duplicates weld exactly
    uv = np.stack([grid_lon / (2 * np.pi), 1.0 - grid_lat / np.pi], -1).reshape(-1, 2).astype(np.float32)
    welded, inv = np.unique(pos, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    tris = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * (n_lon + 1) + j, i * (n_lon + 1) + j + 1
            c, d = a + n_lon + 1, b + n_lon + 1
            tris += [(a, c, b), (b, c, d)]  # counter-clockwise seen from outside
    uv_faces = np.array([t for t in tris if len({inv[t[0]], inv[t[1]], inv[t[2]]}) == 3], dtype=np.int64)
    faces = inv[uv_faces]
    rng = np.random.default_rng(seed)
    texture = torch.from_numpy(rng.integers(0, 256, size=(16, 32, 3)).astype(np.float32) / 255.0)
    return HeadMesh(torch.from_numpy(welded), torch.from_numpy(faces), torch.from_numpy(uv), torch.from_numpy(uv_faces), texture)


def corners(head: HeadMesh) -> tuple[np.ndarray, np.ndarray]:
    """Per-corner positions and UVs [M,3,3], [M,3,2]: independent of vertex numbering."""
    return head.vertices[head.faces].numpy(), head.uvs[head.uv_faces].numpy()


@pytest.fixture()
def head_file(comfy_server) -> tuple[str, HeadMesh]:
    head = textured_sphere()
    rel = "heads/test_head.glb"
    head.save(os.path.join(comfy_server.sandbox.input_dir, rel))
    return rel, head


def test_load_save_head_writes_textured_glb(comfy_server, comfy_clean_output, head_file):
    rel, head = head_file
    prompt = {
        "1": {"class_type": "IDSculptLoadHead", "inputs": {"file": rel}},
        "2": {"class_type": "IDSculptSaveHead", "inputs": {"head": ["1", 0], "filename_prefix": "IDSculptTest/head", "save_obj": True}},
    }
    hist = comfy_server.submit(prompt, timeout=120)
    files = hist["outputs"]["2"]["3d"]
    assert [os.path.splitext(f["filename"])[1] for f in files] == [".glb", ".obj"]
    assert all(f["subfolder"] == "IDSculptTest" and f["type"] == "output" for f in files)
    glb = comfy_server.output_path(files[0])
    assert os.path.isfile(glb) and glb.startswith(comfy_clean_output)
    assert hist["outputs"]["2"]["result"][0] == "IDSculptTest/" + files[0]["filename"]
    obj = comfy_server.output_path(files[1])
    stem = os.path.splitext(obj)[0]
    assert os.path.isfile(stem + ".mtl") and os.path.isfile(stem + ".png")

    import trimesh

    scene = trimesh.load(glb)  # what any glTF consumer sees
    geoms = list(scene.geometry.values()) if isinstance(scene, trimesh.Scene) else [scene]
    assert len(geoms) == 1
    tm = geoms[0]
    assert tm.visual.uv is not None and tm.visual.uv.shape == (len(tm.vertices), 2)
    tex = tm.visual.material.baseColorTexture
    assert tex is not None and tex.size == (32, 16)
    np.testing.assert_array_equal(np.asarray(tex.convert("RGB")), (head.texture.numpy() * 255).round().astype(np.uint8))

    back = HeadMesh.load(glb)
    assert back.faces.shape == head.faces.shape and back.vertices.shape == head.vertices.shape
    p0, t0 = corners(head)
    p1, t1 = corners(back)
    np.testing.assert_allclose(p1, p0, atol=1e-6)
    np.testing.assert_allclose(t1, t0, atol=1e-6)  # v flipped to glTF and back: same UV per corner
    torch.testing.assert_close(back.texture, head.texture, atol=0.5 / 255, rtol=0)

    obj_back = HeadMesh.load(obj)
    np.testing.assert_allclose(corners(obj_back)[0], p0, atol=1e-6)
    np.testing.assert_allclose(corners(obj_back)[1], t0, atol=1e-6)


def test_saved_head_feeds_core_preview3d_and_load3d(comfy_server, comfy_clean_output, head_file):
    rel, _ = head_file
    prompt = {
        "1": {"class_type": "IDSculptLoadHead", "inputs": {"file": rel}},
        "2": {"class_type": "IDSculptSaveHead", "inputs": {"head": ["1", 0], "filename_prefix": "preview", "save_obj": False}},
        "3": {"class_type": "Preview3D", "inputs": {"model_file": ["2", 0]}},
    }
    hist = comfy_server.submit(prompt, timeout=120)
    model_file = hist["outputs"]["3"]["result"][0]
    assert model_file == hist["outputs"]["2"]["3d"][0]["filename"]  # no subfolder: prefix had none
    assert os.path.isfile(os.path.join(comfy_clean_output, model_file))
    # core Load3D lists .glb files under input/3d: ours must be among its choices there
    os.makedirs(os.path.join(comfy_server.sandbox.input_dir, "3d"), exist_ok=True)
    dst = os.path.join(comfy_server.sandbox.input_dir, "3d", "idsculpt_head.glb")
    with open(os.path.join(comfy_clean_output, model_file), "rb") as src, open(dst, "wb") as out:
        out.write(src.read())
    choices = comfy_server.object_info("Load3D")["Load3D"]["input"]["required"]["model_file"][0]
    assert "3d/idsculpt_head.glb" in choices


def test_head_mesh_round_trip_through_core_mesh(comfy_server, comfy_clean_output, head_file):
    """Head -> core MESH -> core SaveGLB, and Head -> MESH -> Head -> Save Head keep the geometry."""
    rel, head = head_file
    prompt = {
        "1": {"class_type": "IDSculptLoadHead", "inputs": {"file": rel}},
        "2": {"class_type": "IDSculptHeadToMesh", "inputs": {"head": ["1", 0]}},
        "3": {"class_type": "SaveGLB", "inputs": {"mesh": ["2", 0], "filename_prefix": "core/mesh"}},
        "4": {"class_type": "IDSculptMeshToHead", "inputs": {"mesh": ["2", 0], "index": 0}},
        "5": {"class_type": "IDSculptSaveHead", "inputs": {"head": ["4", 0], "filename_prefix": "roundtrip/head", "save_obj": False}},
    }
    hist = comfy_server.submit(prompt, timeout=120)
    import trimesh

    core = trimesh.load(comfy_server.output_path(hist["outputs"]["3"]["3d"][0]), force="mesh", process=False)
    assert len(core.faces) == len(head.faces) and len(core.vertices) == len(head.vertices)
    np.testing.assert_allclose(np.asarray(core.vertices, np.float32)[np.asarray(core.faces)], head.vertices[head.faces].numpy(), atol=1e-6)
    back = HeadMesh.load(comfy_server.output_path(hist["outputs"]["5"]["3d"][0]))
    np.testing.assert_allclose(back.vertices[back.faces].numpy(), head.vertices[head.faces].numpy(), atol=1e-6)
    if back.uvs is not None:  # a ComfyUI whose core MESH carries UVs (2026+): the same UV per corner comes back
        np.testing.assert_allclose(corners(back)[1], corners(head)[1], atol=1e-6)  # (0.3.64: geometry only)


def test_load_head_reports_corrupt_and_missing_files(comfy_server):
    with open(os.path.join(comfy_server.sandbox.input_dir, "broken.glb"), "wb") as fh:
        fh.write(b"glTF\x02\x00\x00\x00not really a binary gltf")
    with pytest.raises(ch.ComfyPromptError, match="could not load head mesh 'broken.glb'"):
        comfy_server.submit({"1": {"class_type": "IDSculptLoadHead", "inputs": {"file": "broken.glb"}},
                             "2": {"class_type": "IDSculptSaveHead", "inputs": {"head": ["1", 0], "filename_prefix": "x", "save_obj": False}}},
                            timeout=120)
    with pytest.raises(ch.ComfyPromptError, match="no_such_head.glb"):
        comfy_server.submit({"1": {"class_type": "IDSculptLoadHead", "inputs": {"file": "no_such_head.glb"}},
                             "2": {"class_type": "IDSculptSaveHead", "inputs": {"head": ["1", 0], "filename_prefix": "x", "save_obj": False}}},
                            timeout=120)


def test_save_head_keeps_the_reference_camera_for_evaluation(comfy_inprocess, tmp_path):
    """Heads leave the sculpt in its normalised frame: Save Head keeps the portrait's camera (in that frame) in the
    GLB, and scripts/evaluate_head.py finds it there without being told."""
    import importlib.util

    from idsculpt.core.camera import Cameras

    nodes = comfy_inprocess.load_pack_nodes()
    cam = Cameras.orbit(5.0, -12.0, 3.1, 17.0, 256)
    out = comfy_inprocess.run_node(nodes["IDSculptSaveHead"], head=textured_sphere(), filename_prefix="extras/head",
                                   save_obj=False, reference_camera=cam)
    glb = os.path.join(comfy_inprocess.folder_paths.get_output_directory(), out.args[0])
    spec = importlib.util.spec_from_file_location("evaluate_head", os.path.join(ch.ROOT, "scripts", "evaluate_head.py"))
    evaluate_head = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_head)
    label = evaluate_head.saved_reference_label(glb)
    back = Cameras.from_eg3d_label(torch.tensor([label]), 256)
    assert torch.allclose(back.cam2world, cam.cam2world, atol=1e-5) and torch.allclose(back.fov, cam.fov, atol=1e-4)
    plain = comfy_inprocess.run_node(nodes["IDSculptSaveHead"], head=textured_sphere(), filename_prefix="extras/plain", save_obj=False)
    assert evaluate_head.saved_reference_label(os.path.join(comfy_inprocess.folder_paths.get_output_directory(), plain.args[0])) is None
