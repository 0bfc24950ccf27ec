"""ID Embed, InsightFace Loader, Landmark Render and Geo Supervision nodes inside a real ComfyUI
(in-process: run pytest with ComfyUI's Python and COMFYUI_PATH set, docs/COMFYUI_TESTING.md)."""
from __future__ import annotations

import math
import os
import warnings

import cv2
import pytest
import torch
import trimesh

from idsculpt.core.camera import EG3D_FOCAL, EG3D_RADIUS, Cameras
from idsculpt.core.mesh import HeadMesh
from unchanged import assert_unchanged, snapshot

pytestmark = pytest.mark.comfy

EG3D_FOV = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))


@pytest.fixture(scope="module")
def face_nodes(comfy_inprocess):
    from tiny_insightface import write_tiny_insightface

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_tiny_insightface(comfy_inprocess.sandbox.model_dir("insightface"), "buffalo_l")
    from idsculpt.nodes import face_nodes

    return face_nodes


@pytest.fixture(scope="module")
def portrait(portraits_dir) -> torch.Tensor:
    img = cv2.imread(os.path.join(portraits_dir, "musk_1.jpg"))[:, :, ::-1]
    img = cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img.copy()).float()[None] / 255.0


def head() -> HeadMesh:
    s = trimesh.creation.icosphere(subdivisions=4)
    return HeadMesh(torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor([0.24, 0.30, 0.27]), torch.tensor(s.faces))


def test_nodes_registered(comfy_inprocess):
    nodes = comfy_inprocess.load_pack_nodes()
    for nid in ("IDSculptInsightFaceLoader", "IDSculptIDEmbed", "IDSculptLandmarkRender", "IDSculptGeoSupervision"):
        assert nid in nodes
    schema = nodes["IDSculptIDEmbed"].GET_SCHEMA()
    assert all(getattr(i, "tooltip", None) for i in schema.inputs)


def test_loader_and_id_embed(comfy_inprocess, face_nodes, portrait):
    app = comfy_inprocess.run_node(face_nodes.InsightFaceLoader, model_name="buffalo_l", provider="CPU").args[0]
    assert set(app.models) == {"detection", "recognition"}
    given = snapshot(portrait)
    fid, crop, info = comfy_inprocess.run_node(face_nodes.IDEmbed, image=portrait, insightface=app, face_index=0).args
    assert_unchanged(given, portrait)
    assert fid.embedding.shape == (512,) and abs(float(fid.embedding.norm()) - 1) < 1e-5
    assert crop.shape == (1, 112, 112, 3) and "face found at detector size 640" in info
    with pytest.raises(ValueError, match="too small"):
        comfy_inprocess.run_node(face_nodes.IDEmbed, image=portrait[:, :64, :64], insightface=app, face_index=0)
    with pytest.raises(FileNotFoundError, match="antelopev2"):
        comfy_inprocess.run_node(face_nodes.InsightFaceLoader, model_name="antelopev2", provider="CPU")


def test_landmark_render_and_geo_supervision(comfy_inprocess, face_nodes, portrait):
    pytest.importorskip("mediapipe")
    from idsculpt.core.render import render_mesh
    from idsculpt.nodes import geo_nodes

    mesh = head()
    cam = Cameras.orbit(0.0, 0.0, EG3D_RADIUS, EG3D_FOV, 512)
    given = snapshot((portrait, mesh, cam))
    lm, preview, info = comfy_inprocess.run_node(face_nodes.LandmarkRender, image=portrait, head_mesh=mesh,
                                                 reference_camera=cam, face_index=0, preview_resolution=128,
                                                 landmarker_model="(none)").args
    assert_unchanged(given, (portrait, mesh, cam))
    assert lm.points.shape == (478, 3) and preview.shape == (6, 128, 128, 3)
    assert "7/7 keypoints hit" in info and float(preview.max()) > 0
    # the landmarks' drawing from the reference camera lands where the portrait shows them
    uv = cam.project(lm.points)[0] / 512
    assert float((uv - lm.portrait_landmarks.normalized[:, :2]).abs().max()) < 1e-3

    small = cam.with_resolution(128)
    out = render_mesh(mesh.vertices, mesh.faces, small, antialias=False, backend="torch")
    nimg = torch.where(out.coverage > 0.5, (out.normal_view + 1) / 2, torch.zeros(3))
    dimg = out.disparity.expand(-1, -1, -1, 3)
    p128 = torch.nn.functional.interpolate(portrait.permute(0, 3, 1, 2), size=(128, 128), mode="area").permute(0, 2, 3, 1)
    given = snapshot((p128, cam, nimg, dimg, lm))
    ref, prev, text, head_mask, face_mask = comfy_inprocess.run_node(
        geo_nodes.GeoSupervision, portrait=p128, reference_camera=cam, normal_map=nimg, depth_map=dimg, landmarks=lm,
        depth_convention="near_is_bright").args
    assert_unchanged(given, (p128, cam, nimg, dimg, lm))
    assert "MediaPipe face oval" in text and prev.shape == (3, 128, 128, 3)
    assert "mask: portrait: MediaPipe selfie segmentation ∪ face oval" in text  # the head mask comes from the portrait
    # the masks it settled on come out as ComfyUI MASKs for the texture stage
    assert head_mask.shape == face_mask.shape == (1, 128, 128)
    assert torch.equal(head_mask[0], ref.mask[..., 0].cpu()) and torch.equal(face_mask[0], ref.texture_face_mask[..., 0].cpu())
    sel = ref.face_mask[..., 0] > 0.5  # the normal-loss domain: where the (sphere's) normal map holds normals
    assert float((ref.normal_view[sel] * out.normal_view[0][sel]).sum(-1).mean()) > 0.99
    assert 0 < float(ref.face_mask.sum()) < float(ref.mask.sum())
    with pytest.raises(ValueError, match="all black"):
        comfy_inprocess.run_node(geo_nodes.GeoSupervision, portrait=p128, reference_camera=cam,
                                 normal_map=torch.zeros_like(nimg), depth_map=dimg, depth_convention="near_is_bright")
