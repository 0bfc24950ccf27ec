"""ID Embed core: insightface loading, multi-size detection, face choice, bad inputs.

Runs the real insightface code on tiny ONNX packs with a planted detector (tests/tiny_insightface.py),
so box, keypoints, aligned crop and embedding have known answers.
"""
from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import onnxruntime
import pytest
import torch

from tiny_insightface import ARCFACE_TEMPLATE_112, PlantedFace, write_tiny_insightface

from idsculpt.core.face.detect import (
    FaceID,
    face_id_from_image,
    insightface_model_dir,
    load_face_analysis,
    to_rgb_uint8,
)

# the default planted face: centre (0.5, 0.45), size 0.4 x 0.4 of the detector input
BOX_FRAC = np.array([0.3, 0.25, 0.7, 0.65])


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("insightface")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = str(base / "one")
        write_tiny_insightface(one, "buffalo_l")
        two = str(base / "two")
        write_tiny_insightface(two, "buffalo_l", faces=[PlantedFace(0.3, 0.4, 0.3, 0.4, stride=32),
                                                        PlantedFace(0.75, 0.5, 0.1, 0.12, stride=8)])
        small = str(base / "small")  # finds the face only at detector sizes <= 320
        write_tiny_insightface(small, "buffalo_l", max_input=320)
        ante = str(base / "ante")
        write_tiny_insightface(ante, "antelopev2")
    return {"one": one, "two": two, "small": small, "ante": ante}


@pytest.fixture(scope="module")
def app(roots):
    return load_face_analysis(roots["one"], "buffalo_l", "CPU")


@pytest.fixture(scope="module")
def portrait(portraits_dir) -> torch.Tensor:
    img = cv2.imread(os.path.join(portraits_dir, "musk_1.jpg"))[:, :, ::-1]
    return torch.from_numpy(img.copy()).float()[None] / 255.0  # ComfyUI IMAGE [1,H,W,3]


def test_embedding_box_crop_are_the_planted_face(app, roots, portrait):
    fid = face_id_from_image(app, portrait)
    assert isinstance(fid, FaceID)
    h, w = portrait.shape[1:3]
    np.testing.assert_allclose(fid.box.numpy(), BOX_FRAC * [w, h, w, h], atol=1.0)
    assert fid.embedding.shape == (512,) and abs(float(fid.embedding.norm()) - 1) < 1e-5
    assert fid.num_faces == 1 and fid.index == 0 and fid.det_size == 640 and fid.det_score > 0.99
    # keypoints: the ArcFace template inside the planted box -> the aligned crop is that box, resized
    x1, y1, x2, y2 = fid.box.numpy()
    kps = np.array([x1, y1]) + ARCFACE_TEMPLATE_112 / 112.0 * [x2 - x1, y2 - y1]
    np.testing.assert_allclose(fid.keypoints.numpy(), kps, atol=1.0)
    assert fid.aligned_crop.shape == (112, 112, 3)
    rgb = (portrait[0].numpy() * 255).round().astype(np.uint8)
    ref = cv2.resize(rgb[int(y1):int(y2), int(x1):int(x2)], (112, 112), interpolation=cv2.INTER_AREA) / 255.0
    assert np.abs(fid.aligned_crop.numpy() - ref).mean() < 0.03
    # the embedding is the recogniser's output on that crop (ArcFace input: (bgr... RGB - 127.5) / 127.5)
    sess = onnxruntime.InferenceSession(os.path.join(roots["one"], "models", "buffalo_l", "w600k_r50.onnx"),
                                        providers=["CPUExecutionProvider"])
    crop = (fid.aligned_crop.numpy() * 255.0).round()
    blob = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None].astype(np.float32)
    emb = sess.run(None, {sess.get_inputs()[0].name: blob})[0][0]
    emb = emb / np.linalg.norm(emb)
    assert float(np.dot(emb, fid.embedding.numpy())) > 0.999


def test_detection_retries_smaller_sizes(roots, portrait):
    app = load_face_analysis(roots["small"], "buffalo_l")
    fid = face_id_from_image(app, portrait)
    assert fid.det_size == 320
    assert "after trying [640, 512, 384]" in fid.log


def test_several_faces_largest_first_and_index(roots, portrait):
    app = load_face_analysis(roots["two"], "buffalo_l")
    h, w = portrait.shape[1:3]
    big = face_id_from_image(app, portrait)
    assert big.num_faces == 2 and big.index == 0
    assert "2 faces found" in big.log and "using face #0 (the largest)" in big.log
    np.testing.assert_allclose(big.box.numpy(), np.array([0.15, 0.2, 0.45, 0.6]) * [w, h, w, h], atol=1.0)
    small = face_id_from_image(app, portrait, face_index=1)
    np.testing.assert_allclose(small.box.numpy(), np.array([0.7, 0.44, 0.8, 0.56]) * [w, h, w, h], atol=1.0)
    assert big.cosine(small) < 0.999  # different crops, different identities
    with pytest.raises(ValueError, match=r"face_index 2 is out of range: 2 face\(s\) found"):
        face_id_from_image(app, portrait, face_index=2)


def test_no_face_message(app):
    blank = torch.full((1, 512, 512, 3), 0.5)
    with pytest.raises(RuntimeError, match="No face found in the portrait.*detector sizes tried: \\[640, 512"):
        face_id_from_image(app, blank)


def test_grayscale_rgba_small_huge(app, portrait):
    h, w = portrait.shape[1:3]
    gray = portrait.mean(-1, keepdim=True)
    fid = face_id_from_image(app, gray)
    assert "grayscale" in fid.log
    np.testing.assert_allclose(fid.box.numpy(), BOX_FRAC * [w, h, w, h], atol=1.0)
    alpha = torch.ones_like(portrait[..., :1])
    alpha[:, : h // 4] = 0.0  # transparent top -> composited on white
    rgba = torch.cat([portrait, alpha], -1)
    fid = face_id_from_image(app, rgba)
    assert "alpha channel composited onto white" in fid.log
    rgb, _ = to_rgb_uint8(rgba)
    assert (rgb[: h // 4] == 255).all()
    with pytest.raises(ValueError, match=r"too small: 64x64 px.*at least 128 px"):
        face_id_from_image(app, torch.rand(1, 64, 64, 3))
    huge = torch.nn.functional.interpolate(portrait.permute(0, 3, 1, 2), size=(3000, 3000), mode="bilinear").permute(0, 2, 3, 1)
    fid = face_id_from_image(app, huge)
    assert "downscaled to 2048x2048" in fid.log
    np.testing.assert_allclose(fid.box.numpy(), BOX_FRAC * 3000, atol=3.0)  # in the input's pixels


def test_nan_and_bad_shape_inputs(app):
    bad = torch.rand(1, 256, 256, 3)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        face_id_from_image(app, bad)
    with pytest.raises(ValueError, match="1-4 channels"):
        face_id_from_image(app, torch.rand(256, 256, 7))


def test_model_folder_messages(tmp_path, roots):
    with pytest.raises(FileNotFoundError, match="not found: no .onnx files.*Nothing is downloaded"):
        insightface_model_dir(str(tmp_path), "buffalo_l")
    nested = tmp_path / "models" / "antelopev2" / "antelopev2"
    nested.mkdir(parents=True)
    (nested / "glintr100.onnx").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="one folder too deep"):
        insightface_model_dir(str(tmp_path), "antelopev2")
    # antelopev2 file names route the same way
    app = load_face_analysis(roots["ante"], "antelopev2")
    assert set(app.models) == {"detection", "recognition"}


def test_accepts_an_ipadapter_plus_style_faceanalysis(roots, portrait):
    """IPAdapter_plus's loader: FaceAnalysis(name, root, providers) + prepare(ctx_id=0, det_size=(640, 640))."""
    from insightface.app import FaceAnalysis

    model = FaceAnalysis(name="buffalo_l", root=roots["one"], providers=["CPUExecutionProvider"])
    model.prepare(ctx_id=0, det_size=(640, 640))
    ours = face_id_from_image(load_face_analysis(roots["one"], "buffalo_l"), portrait)
    theirs = face_id_from_image(model, portrait)
    assert ours.cosine(theirs) > 0.9999
