"""Geo Supervision node inside a real ComfyUI: which head mask it used, said in its info output.

Run with COMFYUI_PATH (see docs/COMFYUI_TESTING.md); skipped without a ComfyUI.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from idsculpt.core.camera import EG3D_FOCAL, EG3D_RADIUS, Cameras

pytestmark = pytest.mark.comfy

EG3D_FOV = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))


@pytest.fixture(scope="module")
def inputs(portraits_dir):
    """An aligned real portrait at 256 px, its camera, and noise 'generated' maps (random-weight models)."""
    pytest.importorskip("mediapipe")
    cv2 = pytest.importorskip("cv2")
    from idsculpt.core.panohead.align import align_portrait

    img = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, "musk_1.jpg")), cv2.COLOR_BGR2RGB)
    a = align_portrait(img, out_size=256)
    g = torch.Generator().manual_seed(0)
    portrait = torch.from_numpy(a.image).float()[None] / 255.0
    return portrait, a.cameras, torch.rand(1, 256, 256, 3, generator=g), torch.rand(1, 256, 256, 3, generator=g)


def _run(comfy_inprocess, inputs, **kw):
    from idsculpt.nodes import geo_nodes

    portrait, cam, nimg, dimg = inputs
    return comfy_inprocess.run_node(geo_nodes.GeoSupervision, portrait=portrait, reference_camera=cam, normal_map=nimg,
                                    depth_map=dimg, depth_convention="near_is_bright", **kw).args


def test_schema_has_head_mask_source(comfy_inprocess):
    schema = comfy_inprocess.load_pack_nodes()["IDSculptGeoSupervision"].GET_SCHEMA()
    names = [i.id for i in schema.inputs]
    assert names[0] == "portrait" and names[-1] == "head_mask_source"
    src = schema.inputs[-1]
    assert src.options == ["portrait", "generated_maps"] and src.default == "portrait" and src.optional


def test_head_mask_from_the_portrait_despite_noise_maps(comfy_inprocess, inputs):
    ref, _prev, info, head_mask, face_mask = _run(comfy_inprocess, inputs)
    assert "mask: portrait: MediaPipe selfie segmentation ∪ face oval, eroded 3x3" in info
    # noise maps leave the portrait's mask whole: no salt-and-pepper holes inside the face
    assert torch.equal(face_mask[0] * head_mask[0], face_mask[0]) and float(face_mask.sum()) > 0.05 * 256 * 256
    assert float(face_mask[0][ref.face_mask[..., 0].cpu() < 0.5].sum()) > 0  # only the normal loss skips invalid normals
    old = _run(comfy_inprocess, inputs, head_mask_source="generated_maps")
    assert "mask: generated maps: valid normals with non-zero depth ∪ face oval (head_mask_source = generated_maps)" in old[2]


def test_fallback_is_reported(comfy_inprocess, inputs, monkeypatch):
    from idsculpt.core.face import segment

    def no_legacy(*_a, **_k):
        raise ModuleNotFoundError("No module named 'mediapipe.python.solutions'")

    monkeypatch.setattr(segment, "import_mediapipe", no_legacy)
    _ref, _prev, info, head_mask, _face = _run(comfy_inprocess, inputs)
    assert "mask: fallback to the generated maps: valid normals with non-zero depth ∪ face oval" in info
    assert "mediapipe legacy solutions unavailable" in info and head_mask.shape == (1, 256, 256)
