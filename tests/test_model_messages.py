"""Every loader's "model file missing" error carries the model table's message (core/models.py).

Each test triggers one loader's missing-file path for real (an empty folder / a name that is not
there) and checks the message names the file, the ComfyUI folder the table puts it in, the download
source from the table, and the Model Check node / scripts/check_models.py. Core loaders run directly;
node loaders run in-process through ``comfy_inprocess`` (skipped without ComfyUI's Python).
"""
from __future__ import annotations

import os

import pytest
import torch

from idsculpt.core import models as M


def assert_table_message(msg: str, key: str, name: str | None = None) -> None:
    """``msg`` points at the table row ``key``: folder, source, the check tools (and the file asked for)."""
    spec = M.get_spec(key)
    assert f"models/{spec.folder}" in msg, msg
    assert spec.source in msg, msg
    assert "IDSculpt Model Check" in msg and "python scripts/check_models.py" in msg and "docs/MODELS.md" in msg, msg
    if name is not None:
        assert name in msg, msg


# ------------------------------------------------------------------------------------------- core loaders
def test_insightface_missing(tmp_path):
    from idsculpt.core.face.detect import insightface_model_dir, load_face_analysis

    with pytest.raises(FileNotFoundError) as e:
        insightface_model_dir(str(tmp_path), "buffalo_l")
    assert_table_message(str(e.value), "insightface_det", "buffalo_l")
    assert str(tmp_path) in str(e.value)  # the directory actually searched
    with pytest.raises(FileNotFoundError) as e:  # the public loader goes through the same check
        load_face_analysis(str(tmp_path), "antelopev2")
    assert_table_message(str(e.value), "insightface_det", "antelopev2")


def test_vgg16_missing(tmp_path):
    from idsculpt.core.panohead.perceptual import load_vgg16

    with pytest.raises(FileNotFoundError) as e:
        load_vgg16(str(tmp_path / "vgg16-397923af.pth"))
    assert_table_message(str(e.value), "vgg16", "vgg16-397923af.pth")
    assert "download.pytorch.org/models/vgg16-397923af.pth" in str(e.value)


def test_lpips_vgg_weights_missing(tmp_path):
    """A chosen but absent LPIPS vgg.pth names its own table row (not the backbone's)."""
    from idsculpt.core.panohead.perceptual import VGG16Perceptual, load_vgg16

    backbone = str(tmp_path / "vgg16-397923af.pth")
    torch.save({"features." + k: v for k, v in VGG16Perceptual().features.state_dict().items()}, backbone)
    with pytest.raises(FileNotFoundError) as e:
        load_vgg16(backbone, str(tmp_path / "lpips" / "vgg.pth"))
    assert_table_message(str(e.value), "lpips_vgg", "vgg.pth")
    assert "lpips/weights/v0.1/vgg.pth" in str(e.value)


def test_panohead_missing(tmp_path):
    from idsculpt.core.panohead.checkpoint import convert_pickle, load_generator, read_release_pickle

    pkl = str(tmp_path / "easy-khair-180-gpc0.8-trans10-025000.pkl")
    for call in (lambda: read_release_pickle(pkl), lambda: convert_pickle(pkl), lambda: load_generator(pkl),
                 lambda: load_generator(str(tmp_path / "panohead_converted.safetensors"))):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert_table_message(str(e.value), "panohead")
        assert "CC BY-NC" in str(e.value)


def test_lpips_missing(tmp_path):
    from idsculpt.core.eval.lpips import load_lpips_alex

    with pytest.raises(FileNotFoundError) as e:
        load_lpips_alex(str(tmp_path))
    assert_table_message(str(e.value), "lpips_alex", "alexnet-owt-7be5be79.pth")
    assert_table_message(str(e.value), "lpips_lin", "alex.pth")
    (tmp_path / "alexnet-owt-7be5be79.pth").write_bytes(b"x")  # backbone there: only the linear layers are asked for
    with pytest.raises(FileNotFoundError) as e:
        load_lpips_alex(str(tmp_path))
    assert_table_message(str(e.value), "lpips_lin", "alex.pth")
    assert M.get_spec("lpips_alex").source not in str(e.value)


def test_message_helpers():
    # a file-name match only counts for rows of the folder it was looked for in
    assert M.lookup_spec("my_lora.safetensors", "loras") is None
    assert M.lookup_spec("my_lora.safetensors").key == "texture_sd15"  # folder unknown: the catch-all row
    assert M.lookup_spec("vgg16.pth", "idsculpt").key == "vgg16"
    msg = M.missing_model_message("/some/where/custom_name.pth", "idsculpt", ["/some/where"], key="panohead")
    assert "custom_name.pth" in msg and "/some/where" in msg
    assert_table_message(msg, "panohead")


# ------------------------------------------------------------------------------------------- node loaders
@pytest.fixture(scope="module")
def pack_nodes(comfy_inprocess):
    return comfy_inprocess.load_pack_nodes()


def _node_error(comfy_inprocess, node_cls, **inputs) -> str:
    with pytest.raises(FileNotFoundError) as e:
        comfy_inprocess.run_node(node_cls, **inputs)
    return str(e.value)


@pytest.mark.comfy
def test_model_path_missing(comfy_inprocess):
    from idsculpt.nodes.common import model_path

    sandbox_cn = comfy_inprocess.sandbox.model_dir("controlnet")
    with pytest.raises(FileNotFoundError) as e:
        model_path("controlnet", "control_v11p_sd15_normalbae.pth")
    assert_table_message(str(e.value), "controlnet_normalbae", "control_v11p_sd15_normalbae.pth")
    assert sandbox_cn in str(e.value)  # the folder's real directories are listed


@pytest.mark.comfy
def test_id_adapter_loader_missing(comfy_inprocess, pack_nodes):
    # a name no other test of the session places in the shared sandbox (they may place the canonical one)
    name = "absent-ip-adapter-faceid-portrait-v11_sd15.bin"
    msg = _node_error(comfy_inprocess, pack_nodes["IDSculptIDAdapterLoader"], adapter_name=name)
    assert_table_message(msg, "id_adapter", name)


@pytest.mark.comfy
def test_insightface_loader_missing(comfy_inprocess, pack_nodes):
    msg = _node_error(comfy_inprocess, pack_nodes["IDSculptInsightFaceLoader"], model_name="no_such_pack", provider="CPU")
    assert_table_message(msg, "insightface_det", "no_such_pack")


@pytest.mark.comfy
def test_landmarker_task_missing(comfy_inprocess, pack_nodes):
    from idsculpt.core.camera import Cameras  # noqa: F401  (the node fails on the model before using these)

    msg = _node_error(comfy_inprocess, pack_nodes["IDSculptLandmarkRender"], image=torch.rand(1, 64, 64, 3), head_mesh=None,
                      reference_camera=None, face_index=0, preview_resolution=64, landmarker_model="face_landmarker.task")
    assert_table_message(msg, "mediapipe_task", "face_landmarker.task")


@pytest.mark.comfy
def test_panohead_loader_missing(comfy_inprocess, pack_nodes):
    msg = _node_error(comfy_inprocess, pack_nodes["IDSculptPanoHeadLoader"], checkpoint="easy-khair-180-gpc0.8-trans10-025000.pkl",
                      vgg16="vgg16-397923af.pth")
    assert_table_message(msg, "panohead", "easy-khair-180-gpc0.8-trans10-025000.pkl")


@pytest.mark.comfy
def test_texture_refine_perceptual_missing(comfy_inprocess, pack_nodes):
    from idsculpt.core.mesh import HeadMesh

    head = HeadMesh(vertices=torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), faces=torch.tensor([[0, 1, 2]]),
                    uvs=torch.tensor([[0.0, 0], [1, 0], [0, 1]]), uv_faces=torch.tensor([[0, 1, 2]]), texture=torch.full((8, 8, 3), 0.5))
    msg = _node_error(comfy_inprocess, pack_nodes["IDSculptTextureRefine"], head=head, model=None, positive=[], negative=[], vae=None,
                      seed=0, steps=1, cfg=1.0, sampler_name="ddim", scheduler="ddim_uniform", refine_steps=1, t_min=50, t_max=200,
                      learning_rate=0.02, control_strength=1.0, resolution=64, perceptual_model="vgg16-397923af.pth")
    assert_table_message(msg, "vgg16", "vgg16-397923af.pth")
    assert comfy_inprocess.sandbox.model_dir("idsculpt") in msg


@pytest.mark.comfy
def test_inprocess_model_folders_are_the_sandbox_only(comfy_inprocess, pack_nodes):
    """The missing-file tests above hold whatever the user installed: in-process ComfyUI reads every
    model folder from the test sandbox, never from the checkout's models/ (tests/comfy_harness.py)."""
    fp = comfy_inprocess.folder_paths
    real = os.path.realpath(os.path.join(comfy_inprocess.comfy_path, "models"))
    checked = 0
    for name in ("checkpoints", "controlnet", "ipadapter", "idsculpt", "vae", "upscale_models", "clip_vision", "insightface",
                 "mediapipe", "loras", "diffusers"):
        if name not in fp.folder_names_and_paths:
            continue
        for p in fp.get_folder_paths(name):
            assert not os.path.realpath(p).startswith(real + os.sep), (name, p)
            checked += 1
    assert checked >= 9
    assert os.path.realpath(fp.models_dir) == os.path.realpath(comfy_inprocess.sandbox.models_dir)
