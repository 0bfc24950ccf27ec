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
    mesh, cam, aligned, views, info = comfy_inprocess.run_node(
        nodes.PanoHeadInvert, portrait=_portrait(portraits_dir), panohead=model, init="auto", w_steps=2, pti_steps=1,
        mesh_resolution=64, mesh_level=0.0, view_resolution=16, seed=0).args
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
