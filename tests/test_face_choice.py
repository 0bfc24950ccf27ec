"""One face throughout, one landmark detector, one size check (issue 19).

* the face ordering ID Embed and the MediaPipe landmarks share (``detect.largest_first``);
* PanoHead's alignment picks the face by that order or by ID Embed's box;
* the alignment reaches the Tasks API when the legacy FaceMesh is missing (mediapipe modules
  monkeypatched), and names the file to put in models/mediapipe when neither works;
* a 64-px portrait is refused by the alignment with ID Embed's own message.
"""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

from idsculpt.core.dependencies import MissingDependency
from idsculpt.core.face import landmarks as L
from idsculpt.core.face.detect import check_image_size, largest_first, to_rgb_uint8
from idsculpt.core.panohead import align as al


def _load(portraits_dir: str, name: str) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, name)), cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- ordering and size (no mediapipe)
def test_largest_first_is_box_area_order():
    # areas: 20*10=200, 30*30=900, 5*5=25, 10*20=200 (tie with #0: detector order kept)
    boxes = [(0, 0, 20, 10), (100, 100, 130, 130), (0, 0, 5, 5), (50, 50, 60, 70)]
    assert largest_first(boxes) == [1, 0, 3, 2]
    assert largest_first([]) == []
    assert largest_first([(10, 10, 5, 5), (0, 0, 1, 1)]) == [1, 0]  # an inverted box has area 0


def test_box_iou_known_answers():
    assert L.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert L.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert L.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_alignment_refuses_a_small_portrait_with_id_embeds_message():
    small = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(ValueError) as id_embed:  # the conversion ID Embed runs first (core/face/detect.py)
        to_rgb_uint8(small)
    with pytest.raises(ValueError) as panohead:
        al.align_portrait(small)
    assert str(panohead.value) == str(id_embed.value)
    assert str(id_embed.value).startswith("portrait is too small: 64x64 px; face detection needs at least 128 px")
    # before any landmark work: even given landmarks, the portrait is refused
    with pytest.raises(ValueError, match="too small: 64x64"):
        al.align_portrait(small, landmarks=np.zeros((478, 3)))
    check_image_size(128, 300)  # the limit itself passes


# --------------------------------------------------------------------------- several faces (real MediaPipe)
def test_alignment_chooses_the_face_like_id_embed(portraits_dir):
    pytest.importorskip("mediapipe")
    img = _load(portraits_dir, "two_faces.jpg")
    f0 = al.portrait_landmarks(img, face_index=0)  # the one detector, at the alignment's threshold
    f1 = al.portrait_landmarks(img, face_index=1)
    assert f0.num_faces == 2 and largest_first([f0.box(), f1.box()]) == [0, 1]  # the shared order
    a0 = al.align_portrait(img)
    a1 = al.align_portrait(img, face_index=1)
    assert (a0.face_index, a0.num_faces, a1.face_index) == (0, 2, 1)
    assert "using face #1 of 2" in a1.log and "Set face_index to use another" in a1.log
    # each crop is built from its own face: the crop's landmarks are that face's points mapped by the crop
    np.testing.assert_allclose(a1.landmarks[:, :2], f1.points[:, :2].double().numpy() @ a1.crop_matrix[:, :2].T
                               + a1.crop_matrix[:, 2], atol=1e-3)
    assert np.abs(a0.quad.mean(0) - a1.quad.mean(0)).max() > 0.25 * f0.image_size[1]  # a different person
    # ID Embed's box chooses: a box around face #1 (padded like a detector box) aligns face #1
    x1, y1, x2, y2 = f1.box()
    pad = 0.1 * (x2 - x1)
    by_box = al.align_portrait(img, face_box=(x1 - pad, y1 - pad, x2 + pad, y2 + pad), face_index=0)
    assert by_box.face_index == 1 and np.array_equal(by_box.image, a1.image)
    assert "the face ID Embed chose" in by_box.log and "Set ID Embed's face_index" in by_box.log
    with pytest.raises(ValueError, match="overlaps none of the 2 faces MediaPipe found"):
        al.align_portrait(img, face_box=(0, 0, 3, 3))


# --------------------------------------------------------------------------- Tasks API fallback
def _fake_tasks(points: list[np.ndarray], calls: list) -> tuple[types.ModuleType, types.ModuleType]:
    """Stand-ins for ``mediapipe.tasks.python`` and ``.vision`` whose FaceLandmarker returns ``points``
    (normalised [478,3] per face), recording the options it was created with."""
    python = types.ModuleType("mediapipe.tasks.python")
    vision = types.ModuleType("mediapipe.tasks.python.vision")

    class BaseOptions:
        def __init__(self, model_asset_path):
            self.model_asset_path = model_asset_path

    class FaceLandmarkerOptions:
        def __init__(self, **kw):
            self.kw = kw

    class Landmarker:
        def __init__(self, opts):
            calls.append(opts.kw)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def detect(self, image):
            lm = [[types.SimpleNamespace(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in f] for f in points]
            return types.SimpleNamespace(face_landmarks=lm)

    vision.FaceLandmarkerOptions = FaceLandmarkerOptions
    vision.RunningMode = types.SimpleNamespace(IMAGE="IMAGE")
    vision.FaceLandmarker = types.SimpleNamespace(create_from_options=Landmarker)
    python.BaseOptions = BaseOptions
    python.vision = vision
    return python, vision


def test_alignment_falls_back_to_the_tasks_api(portraits_dir, tmp_path, monkeypatch):
    """Legacy FaceMesh missing (as in mediapipe > 0.10.21): the alignment runs the Tasks API with the given
    face_landmarker.task. Known answer: fed the legacy FaceMesh's own points, the Tasks path gives the same crop
    and camera label."""
    pytest.importorskip("mediapipe")
    img = _load(portraits_dir, "pichai_2.jpg")
    ref = al.align_portrait(img)
    legacy_pts = al.portrait_landmarks(img).normalized.numpy()
    task = tmp_path / "face_landmarker.task"
    task.write_bytes(b"read by the (fake) Tasks API only")
    calls: list = []
    python, vision = _fake_tasks([legacy_pts], calls)
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions.face_mesh", None)  # legacy FaceMesh gone
    monkeypatch.setitem(sys.modules, "mediapipe.tasks.python", python)
    monkeypatch.setitem(sys.modules, "mediapipe.tasks.python.vision", vision)
    got = al.align_portrait(img, model_path=str(tmp_path))  # a folder holding the file is accepted too
    assert "MediaPipe (tasks) found 1 face(s)" in got.log
    assert calls and calls[0]["min_face_detection_confidence"] == al.ALIGN_MIN_CONFIDENCE and calls[0]["num_faces"] == 8
    assert np.array_equal(got.image, ref.image) and torch.allclose(got.label, ref.label, atol=1e-5)

    # neither path: one message with the real cause of each and the file to put in models/mediapipe
    with pytest.raises(MissingDependency) as both:
        al.align_portrait(img)
    msg = str(both.value)
    assert msg.startswith("No MediaPipe face landmarker available (PanoHead alignment)")
    assert "legacy FaceMesh: mediapipe" in msg and "has no module 'mediapipe.python.solutions.face_mesh'" in msg
    assert "Tasks API: no face_landmarker.task chosen" in msg
    assert "put face_landmarker.task (https://storage.googleapis.com/" in msg and "models/mediapipe" in msg
    assert "landmarker_model" in msg
    # the Tasks API itself missing too (an odd build): named as such
    monkeypatch.setitem(sys.modules, "mediapipe.tasks.python", None)
    with pytest.raises(MissingDependency, match="Tasks API: mediapipe's Tasks API cannot be imported: mediapipe"):
        al.align_portrait(img, model_path=str(task))
