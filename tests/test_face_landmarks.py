"""MediaPipe landmarks on the shared real portraits (mediapipe 0.10.21's built-in face mesh)."""
from __future__ import annotations

import os

import cv2
import pytest
import torch

pytest.importorskip("mediapipe")

from idsculpt.core.face.landmarks import (  # noqa: E402
    KEYPOINTS_7,
    NUM_LANDMARKS,
    detect_landmarks,
    face_oval_polygon,
    mediapipe_connections,
    mesh_triangles,
    self_occluded,
)


def load(portraits_dir: str, name: str) -> torch.Tensor:
    img = cv2.imread(os.path.join(portraits_dir, name))[:, :, ::-1]
    return torch.from_numpy(img.copy()).float()[None] / 255.0


@pytest.mark.parametrize("name", ["musk_1.jpg", "jolie_1.jpg", "pichai_1.jpg"])
def test_478_landmarks_on_real_portraits(portraits_dir, name, output_dir):
    from idsculpt.core.face.landmark_image import draw_landmark_image

    img = load(portraits_dir, name)
    lm = detect_landmarks(img)
    # for a look: the landmark image over the dimmed portrait
    h0, w0 = img.shape[1:3]
    drawn = draw_landmark_image(lm.points[:, :2].numpy(), None, h0, w0, lm.connections)
    over = (img[0].numpy() * 255 * 0.4).astype("uint8")
    over[drawn.any(-1)] = drawn[drawn.any(-1)]
    cv2.imwrite(os.path.join(output_dir, f"landmarks_portrait_{name[:-4]}.png"), over[:, :, ::-1])
    h, w = img.shape[1:3]
    assert lm.points.shape == (NUM_LANDMARKS, 3) and lm.image_size == (h, w) and lm.num_faces == 1
    p = lm.points
    assert (p[:, 0] >= 0).all() and (p[:, 0] <= w).all() and (p[:, 1] >= 0).all() and (p[:, 1] <= h).all()
    # anatomy in image coordinates: the subject's right eye (33) is on the image left of the left eye
    # (263); eyes above the nose tip (4) above the mouth corners (61, 291); pupils inside the eyes
    assert p[33, 0] < p[133, 0] < p[362, 0] < p[263, 0]
    assert max(p[33, 1], p[263, 1]) < p[4, 1] < min(p[61, 1], p[291, 1])
    assert p[33, 0] < p[468, 0] < p[133, 0] and p[362, 0] < p[473, 0] < p[263, 0]
    # a frontal portrait hides (almost) none of its own landmarks
    tri = mesh_triangles(lm.connections)
    hidden = self_occluded(lm.points, tri, eps=0.03 * float(p[:, 0].max() - p[:, 0].min()))
    assert int(hidden.sum()) < 25


def test_several_faces(portraits_dir):
    two = load(portraits_dir, "two_faces.jpg")
    a = detect_landmarks(two)
    assert a.num_faces == 2 and "using face #0 (the largest) of 2" in a.log
    b = detect_landmarks(two, face_index=1)
    wa = a.box()[2] - a.box()[0]
    wb = b.box()[2] - b.box()[0]
    assert wa * (a.box()[3] - a.box()[1]) >= wb * (b.box()[3] - b.box()[1])
    assert abs((a.box()[0] + a.box()[2]) - (b.box()[0] + b.box()[2])) / 2 > 0.5 * wa  # a different face
    with pytest.raises(ValueError, match="face_index 5 is out of range"):
        detect_landmarks(two, face_index=5)
    many = detect_landmarks(load(portraits_dir, "many_faces.jpg"))
    assert many.num_faces >= 3 and "Set face_index" in many.log


def test_bad_inputs(portraits_dir):
    with pytest.raises(RuntimeError, match="MediaPipe found no face"):
        detect_landmarks(torch.full((1, 256, 256, 3), 0.3))
    with pytest.raises(ValueError, match="too small: 64x64 px"):
        detect_landmarks(torch.rand(1, 64, 64, 3))
    img = load(portraits_dir, "jolie_1.jpg")
    gray = detect_landmarks(img.mean(-1, keepdim=True))
    ref = detect_landmarks(img)
    assert "grayscale" in gray.log
    assert float((gray.points[:, :2] - ref.points[:, :2]).norm(dim=-1).median()) < 0.01 * img.shape[2]
    rgba = torch.cat([img, torch.ones_like(img[..., :1])], -1)
    assert detect_landmarks(rgba).points.shape == (NUM_LANDMARKS, 3)
    with pytest.raises(RuntimeError, match="No MediaPipe face landmarker available"):
        detect_landmarks(img, backend="tasks", model_path=None)


def test_connections_come_from_mediapipe():
    c = mediapipe_connections()
    assert c["source"].endswith(os.path.join("solutions", "face_mesh_connections.py"))
    assert len(c["face_oval"]) == 36 and len(c["lips"]) == 40
    loop = face_oval_polygon(c)
    assert len(loop) == 36 and len(set(loop)) == 36 and 10 in loop and 152 in loop  # forehead top, chin
    tri = mesh_triangles(c)
    assert 800 < tri.shape[0] < 1000 and int(tri.max()) < 468
    assert set(KEYPOINTS_7) <= set(range(468))
