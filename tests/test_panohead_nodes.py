"""PanoHead nodes inside ComfyUI (run with ComfyUI's Python): loader conversion, template and PanoHead inversion."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from panohead_fixtures import dump_release_pickle, tiny_generator  # noqa: E402
from torch_threads import one_thread  # noqa: E402,F401  (autouse: this module runs single-threaded)
from unchanged import assert_unchanged, snapshot  # noqa: E402

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def nodes(comfy_inprocess):
    from idsculpt.nodes import panohead_nodes

    return panohead_nodes


def _portrait(portraits_dir: str) -> torch.Tensor:
    import cv2

    img = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, "pichai_2.jpg")), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(img.astype(np.float32) / 255.0)[None]


def test_template_init_without_checkpoint(comfy_inprocess, nodes, portraits_dir):
    from idsculpt.core.camera import Cameras
    from idsculpt.core.mesh import HeadMesh

    model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint=nodes.NONE, vgg16=nodes.NO_VGG).args
    assert model.generator is None and "template" in info
    mesh, cam, aligned, views, info = comfy_inprocess.run_node(
        nodes.PanoHeadInvert, portrait=_portrait(portraits_dir), panohead=model, init="auto", w_steps=1, pti_steps=1,
        mesh_resolution=64, mesh_level=20.0, view_resolution=32, seed=0).args
    assert isinstance(mesh, HeadMesh) and isinstance(cam, Cameras) and len(cam) == 1
    assert aligned.shape == (1, 512, 512, 3) and info.startswith("init=template")
    assert views.normals.shape == (40, 32, 32, 3) and views.masks.shape == (40, 32, 32, 1)
    with pytest.raises(ValueError, match="no PanoHead checkpoint"):
        comfy_inprocess.run_node(nodes.PanoHeadInvert, portrait=_portrait(portraits_dir), panohead=model, init="panohead",
                                 w_steps=1, pti_steps=1, mesh_resolution=64, mesh_level=20.0, view_resolution=32, seed=0)


def test_loader_converts_release_pickle_and_invert_uses_it(comfy_inprocess, nodes, portraits_dir, tmp_path):
    from safetensors.torch import save_file

    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.panohead.triplane import tiny_config

    folder = comfy_inprocess.folder_paths.get_folder_paths("idsculpt")[0]
    os.makedirs(folder, exist_ok=True)
    marker = str(tmp_path / "PWNED")
    src = f"import pathlib\npathlib.Path({marker!r}).write_text('x')\nraise RuntimeError('pickled code ran')\n"
    with open(os.path.join(folder, "tiny-panohead.pkl"), "wb") as f:
        f.write(dump_release_pickle(tiny_generator(seed=4), tiny_config(), src))
    vgg = VGG16Perceptual()
    save_file({f"features.{k}": v.half() for k, v in vgg.features.state_dict().items()}, os.path.join(folder, "vgg16.safetensors"))
    model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint="tiny-panohead.pkl", vgg16="vgg16.safetensors").args
    assert "pickle code not executed" in info and not os.path.exists(marker)
    assert not model.perceptual.has_lpips_heads and "NOT the authors' LPIPS-VGG" in info  # no lpips/vgg.pth here
    assert os.path.isfile(os.path.join(folder, "tiny-panohead.safetensors")) and os.path.isfile(os.path.join(folder, "tiny-panohead.json"))
    portrait = _portrait(portraits_dir)

    def given_values():  # the loader's output as Invert receives it: the weights, the render settings, the portrait
        g = model.generator
        return (portrait, dict(g.state_dict()), g.rendering_kwargs, g.neural_rendering_resolution, dict(model.perceptual.state_dict()))

    given = snapshot(given_values())
    mesh, cam, aligned, views, info = comfy_inprocess.run_node(
        nodes.PanoHeadInvert, portrait=portrait, panohead=model, init="auto", w_steps=2, pti_steps=1,
        mesh_resolution=64, mesh_level=0.0, view_resolution=16, seed=0).args
    assert_unchanged(given, given_values())  # inversion and PTI tune a copy
    assert info.startswith("init=panohead") and mesh.faces.shape[0] > 0 and "NOT the authors' LPIPS-VGG" in info
    assert torch.isfinite(mesh.vertices).all() and views.normals.shape == (40, 16, 16, 3)


def test_loader_takes_the_learned_lpips_weights(comfy_inprocess, nodes, tmp_path):
    """lpips_weights='auto' picks models/idsculpt/lpips/vgg.pth when it is there; 'none' keeps unit weights."""
    from safetensors.torch import save_file

    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.panohead.triplane import tiny_config

    folder = comfy_inprocess.folder_paths.get_folder_paths("idsculpt")[0]
    os.makedirs(os.path.join(folder, "lpips"), exist_ok=True)
    with open(os.path.join(folder, "tiny-lpips-panohead.pkl"), "wb") as f:
        f.write(dump_release_pickle(tiny_generator(seed=5), tiny_config(), "raise RuntimeError('pickled code ran')\n"))
    save_file({f"features.{k}": v for k, v in VGG16Perceptual().features.state_dict().items()}, os.path.join(folder, "vgg16.safetensors"))
    lins = [torch.full((1, c, 1, 1), 0.25 + k) for k, c in enumerate((64, 128, 256, 512, 512))]
    lin_path = os.path.join(folder, "lpips", "vgg.pth")
    torch.save({f"lin{k}.model.1.weight": v for k, v in enumerate(lins)}, lin_path)
    try:
        model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint="tiny-lpips-panohead.pkl", vgg16="vgg16.safetensors").args
        assert model.perceptual.has_lpips_heads and "learned LPIPS v0.1 channel weights" in info
        assert all(torch.equal(w, v.flatten()) for w, v in zip(model.perceptual.lin, lins))
        model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint="tiny-lpips-panohead.pkl", vgg16="vgg16.safetensors",
                                               lpips_weights="none").args
        assert not model.perceptual.has_lpips_heads and "NOT the authors' LPIPS-VGG" in info
    finally:
        os.remove(lin_path)


def test_texture_perceptual_is_the_authors_call(comfy_inprocess):
    """Texture Refine's term: the 0..1 render and target go to LPIPS unchanged and at full size (the authors'
    ip_controlnet_inpaint.py passes them straight to threestudio's PerceptualLoss), unlike the inversion's
    256-px [-1,1] input."""
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.nodes.perceptual import texture_perceptual

    torch.manual_seed(0)
    net = VGG16Perceptual()
    a, b = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        got = texture_perceptual(net)(a, b)
        want = net.distance(net.taps(a, None), net.taps(b, None))
        assert torch.equal(got, want) and got.shape == (2,)
        assert (got - net(a * 2 - 1, b * 2 - 1)).abs().max() > 1e-4  # the [-1,1] rescale would be a different loss
        assert (got - net(a, b, max_size=32)).abs().max() > 1e-4  # and so would a resize


# --------------------------------------------------------------------------- issue 19: first run
@pytest.fixture()
def empty_idsculpt(comfy_inprocess, tmp_path, monkeypatch):
    """models/idsculpt as a fresh empty folder for this test (the session's folder holds other tests' files)."""
    fp = comfy_inprocess.folder_paths
    folder = tmp_path / "idsculpt"
    folder.mkdir()
    _, exts = fp.folder_names_and_paths["idsculpt"]
    monkeypatch.setitem(fp.folder_names_and_paths, "idsculpt", ([str(folder)], exts))
    return folder


def test_loader_auto_takes_panohead_when_present_else_the_template(comfy_inprocess, nodes, portraits_dir, empty_idsculpt):
    """The shipped default (checkpoint 'auto', vgg16 'auto'): without PanoHead's release file the pair runs the
    template head; with it (a tiny stand-in under the release name) the pair runs PanoHead. Info says which and why."""
    from safetensors.torch import save_file

    from idsculpt.core.models import get_spec
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.panohead.triplane import tiny_config

    schema = nodes.PanoHeadLoader.GET_SCHEMA()
    ck, vg = schema.inputs[0], schema.inputs[1]
    assert (ck.options[0], ck.default, vg.options[0], vg.default) == ("auto", "auto", "auto", "auto")
    assert nodes.NONE in ck.options and nodes.NO_VGG in vg.options  # make_workflows' TEMPLATE_HEAD values stay valid
    run = dict(portrait=_portrait(portraits_dir), init="auto", w_steps=2, pti_steps=1, mesh_resolution=64,
               mesh_level=0.0, view_resolution=16, seed=0)
    release = get_spec("panohead").filename

    model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint="auto", vgg16="auto").args
    assert model.generator is None and info.startswith(f"checkpoint auto: no PanoHead file ({release}) in {empty_idsculpt}")
    assert "template head is used" in info
    *_, inv_info = comfy_inprocess.run_node(nodes.PanoHeadInvert, panohead=model, **run).args
    assert inv_info.startswith("init=template") and "loader: checkpoint auto: no PanoHead file" in inv_info

    with open(empty_idsculpt / release, "wb") as f:  # the stand-in under the release name
        f.write(dump_release_pickle(tiny_generator(seed=4), tiny_config(), "raise RuntimeError('pickled code ran')\n"))
    with pytest.raises(FileNotFoundError, match="needs VGG16 weights") as e:
        comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint="auto", vgg16="auto")
    assert "vgg16-397923af.pth" in str(e.value) and nodes.NONE in str(e.value)
    save_file({f"features.{k}": v.half() for k, v in VGG16Perceptual().features.state_dict().items()},
              str(empty_idsculpt / "vgg16.safetensors"))
    model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint="auto", vgg16="auto").args
    assert model.generator is not None and info.startswith(f"checkpoint auto: PanoHead found ({empty_idsculpt / release})")
    assert "vgg16 auto: vgg16.safetensors" in info and "pickle code not executed" in info
    mesh, _cam, _al, views, inv_info = comfy_inprocess.run_node(nodes.PanoHeadInvert, panohead=model, **run).args
    assert inv_info.startswith("init=panohead") and "loader: checkpoint auto: PanoHead found" in inv_info
    assert torch.isfinite(mesh.vertices).all() and views.normals.shape == (40, 16, 16, 3)
    # 'none (template head)' still forces the template (make_workflows' TEMPLATE_HEAD patch)
    model, info = comfy_inprocess.run_node(nodes.PanoHeadLoader, checkpoint=nodes.NONE, vgg16=nodes.NO_VGG).args
    assert model.generator is None and "template head" in info


def test_invert_refuses_a_small_portrait_with_id_embeds_message(comfy_inprocess, nodes):
    """The 64-px portrait is refused where it enters (PanoHead Invert in the shipped graph), in ID Embed's words,
    not upsampled into a blurry 512² crop."""
    import warnings

    from tiny_insightface import write_tiny_insightface

    from idsculpt.nodes import face_nodes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_tiny_insightface(comfy_inprocess.sandbox.model_dir("insightface"), "buffalo_l")
    small = torch.rand(1, 64, 64, 3)
    app = comfy_inprocess.run_node(face_nodes.InsightFaceLoader, model_name="buffalo_l", provider="CPU").args[0]
    with pytest.raises(ValueError) as id_embed:
        comfy_inprocess.run_node(face_nodes.IDEmbed, image=small, insightface=app, face_index=0)
    with pytest.raises(ValueError) as invert:
        comfy_inprocess.run_node(nodes.PanoHeadInvert, portrait=small, init="template", w_steps=1, pti_steps=1,
                                 mesh_resolution=64, mesh_level=20.0, view_resolution=16, seed=0)
    assert str(invert.value) == str(id_embed.value) and "portrait is too small: 64x64 px" in str(invert.value)


def test_invert_aligns_the_chosen_face(comfy_inprocess, nodes, portraits_dir):
    """Two faces: info says how many, which one and how to choose; face_index 1 and ID Embed's face_id (its box
    around face #1, given at another image size) align the same face."""
    pytest.importorskip("mediapipe")
    import cv2

    from idsculpt.core.face.detect import FaceID
    from idsculpt.core.panohead.align import portrait_landmarks

    img = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, "two_faces.jpg")), cv2.COLOR_BGR2RGB)
    portrait = torch.from_numpy(img.astype(np.float32) / 255.0)[None]
    run = dict(portrait=portrait, init="template", w_steps=1, pti_steps=1, mesh_resolution=64, mesh_level=20.0,
               view_resolution=16, seed=0)
    _m, _c, al0, _v, info0 = comfy_inprocess.run_node(nodes.PanoHeadInvert, **run).args
    assert "MediaPipe (legacy) found 2 face(s)" in info0 and "using face #0 (the largest) of 2" in info0
    assert "Set face_index to use another" in info0 and "connect ID Embed's face_id" in info0
    _m, _c, al1, _v, info1 = comfy_inprocess.run_node(nodes.PanoHeadInvert, face_index=1, **run).args
    assert "using face #1 of 2" in info1 and float((al0 - al1).abs().mean()) > 0.05
    # ID Embed saw the portrait at half size: its box is scaled to this portrait
    h, w = img.shape[:2]
    x1, y1, x2, y2 = portrait_landmarks(img, face_index=1).box()
    fid = FaceID(embedding=torch.zeros(512), box=torch.tensor([x1, y1, x2, y2]) / 2, keypoints=torch.zeros(5, 2),
                 aligned_crop=torch.zeros(112, 112, 3), det_score=0.9, index=1, num_faces=2, image_size=(h // 2, w // 2))
    _m, _c, al_id, _v, info_id = comfy_inprocess.run_node(nodes.PanoHeadInvert, face_id=fid, **run).args
    assert torch.equal(al_id, al1) and "the face ID Embed chose" in info_id and "connect ID Embed's face_id" not in info_id


def test_face_id_box_scales_to_the_portrait(nodes):
    from types import SimpleNamespace

    fid = SimpleNamespace(box=torch.tensor([10.0, 20.0, 30.0, 40.0]), image_size=(100, 200))  # (H, W)
    assert nodes.face_id_box(fid, (200, 400)) == [20.0, 40.0, 60.0, 80.0]
    assert nodes.face_id_box(fid, (100, 200)) == [10.0, 20.0, 30.0, 40.0]
    assert nodes.face_id_box(None, (100, 200)) is None
