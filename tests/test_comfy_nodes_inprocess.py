"""Foundation node helpers with ComfyUI imported in-process (run pytest with ComfyUI's Python):
core MESH bridge, Save Head's files and UI result, the progress/interrupt adapter, IMAGE conversion,
and the pack's model folder."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from idsculpt.core.mesh import HeadMesh
from unchanged import assert_unchanged, snapshot

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def mesh_nodes(comfy_inprocess):
    from idsculpt.nodes import mesh_nodes

    return mesh_nodes


def tetra() -> HeadMesh:
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    uv = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.float32)
    tex = torch.linspace(0, 1, 4 * 4 * 3).reshape(4, 4, 3)
    return HeadMesh(v, f, uv, f.clone(), tex)


def test_pack_nodes_load_through_entrypoint(comfy_inprocess):
    nodes = comfy_inprocess.load_pack_nodes()
    for nid in ("IDSculptSaveHead", "IDSculptLoadHead", "IDSculptHeadToMesh", "IDSculptMeshToHead"):
        assert nid in nodes


def test_core_mesh_bridge_uses_core_class_and_round_trips(comfy_inprocess, mesh_nodes):
    head = tetra()
    given = snapshot(head)
    out = comfy_inprocess.run_node(mesh_nodes.HeadToMesh, head=head)
    mesh = out.args[0]
    assert_unchanged(given, head)
    # the host's class: Types.MESH on newer ComfyUI, comfy_extras/nodes_hunyuan3d's on 0.3.64
    cls = mesh_nodes.core_mesh_class()
    assert type(mesh) is cls and cls.__name__ == "MESH"
    assert mesh.vertices.shape == (1, 4, 3) and mesh.faces.shape == (1, 4, 3)
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64
    # a batch of two core meshes (as VoxelToMesh makes): pick the second
    batch = cls(torch.stack([mesh.vertices[0], mesh.vertices[0] * 2]), torch.cat([mesh.faces, mesh.faces]))
    given = snapshot(batch)
    back = comfy_inprocess.run_node(mesh_nodes.MeshToHead, mesh=batch, index=1).args[0]
    assert_unchanged(given, batch)
    assert isinstance(back, HeadMesh) and back.uvs is None
    torch.testing.assert_close(back.vertices, head.vertices * 2)
    torch.testing.assert_close(back.faces, head.faces)
    with pytest.raises(ValueError, match="batch index 2 out of range"):
        comfy_inprocess.run_node(mesh_nodes.MeshToHead, mesh=batch, index=2)
    bad = cls(mesh.vertices, mesh.faces + 10)
    with pytest.raises(ValueError, match="outside"):
        comfy_inprocess.run_node(mesh_nodes.MeshToHead, mesh=bad, index=0)


def test_save_head_output_and_ui(comfy_inprocess, mesh_nodes):
    out_dir = comfy_inprocess.folder_paths.get_output_directory()
    head = tetra()
    given = snapshot(head)
    res = comfy_inprocess.run_node(mesh_nodes.SaveHead, head=head, filename_prefix="inproc/tet", save_obj=True)
    assert_unchanged(given, head)
    path, mesh = res.args
    assert path == "inproc/tet_00001_.glb"
    assert os.path.isfile(os.path.join(out_dir, path))
    assert res.ui["3d"][0] == {"filename": "tet_00001_.glb", "subfolder": "inproc", "type": "output"}
    assert res.ui["3d"][1]["filename"] == "tet_00001_.obj"
    assert res.ui["result"] == [path, None]
    assert mesh.vertices.shape == (1, 4, 3)
    # the counter moves on: a second save does not overwrite the first
    res2 = comfy_inprocess.run_node(mesh_nodes.SaveHead, head=tetra(), filename_prefix="inproc/tet", save_obj=False)
    assert res2.args[0] == "inproc/tet_00002_.glb"
    nan_head = tetra().with_(vertices=torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match="non-finite"):
        comfy_inprocess.run_node(mesh_nodes.SaveHead, head=nan_head, filename_prefix="inproc/nan", save_obj=False)


def test_load_head_lists_input_and_output_files(comfy_inprocess, mesh_nodes):
    fp = comfy_inprocess.folder_paths
    tetra().save(os.path.join(fp.get_input_directory(), "sub", "a.glb"))
    tetra().save(os.path.join(fp.get_output_directory(), "b.obj"))
    with open(os.path.join(fp.get_input_directory(), "notes.txt"), "w") as fh:
        fh.write("not a mesh")
    options = mesh_nodes.LoadHead.GET_SCHEMA().inputs[0].options
    assert "sub/a.glb" in options and "b.obj [output]" in options and "notes.txt" not in options
    head = comfy_inprocess.run_node(mesh_nodes.LoadHead, file="b.obj [output]").args[0]
    torch.testing.assert_close(head.texture, tetra().texture, atol=0.5 / 255, rtol=0)
    with pytest.raises(FileNotFoundError, match="put a .glb/.obj in ComfyUI's input folder"):
        comfy_inprocess.run_node(mesh_nodes.LoadHead, file="gone.glb")


def test_progress_adapter_reports_previews_and_stops_on_interrupt(comfy_inprocess):
    import comfy.model_management as mm
    import comfy.utils

    from idsculpt.nodes.common import ComfyProgress, progress_callbacks

    calls = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total, preview)))
    try:
        p = ComfyProgress(10, preview_size=256)
        p.progress(3, 10, torch.rand(2, 8, 6, 3))
        # the final step: newer ComfyUI throttles intermediate non-preview updates (PR #11504) but always
        # sends previews, the first and the final one, so this holds on 0.3.64 and today alike
        p(10, None, None)
        assert [(c[0], c[1]) for c in calls] == [(3, 10), (10, 10)]
        fmt, pil, size = calls[0][2]
        assert fmt == "JPEG" and pil.size == (6, 8) and size == 256
        assert calls[1][2] is None
        progress, interrupt = progress_callbacks(5)
        interrupt()  # nothing pending: no exception
        mm.interrupt_current_processing(True)
        with pytest.raises(mm.InterruptProcessingException):
            interrupt()
        mm.interrupt_current_processing(True)
        with pytest.raises(mm.InterruptProcessingException):
            progress(1, 5, None)
    finally:
        mm.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(old)


def test_image_conversions(comfy_inprocess):
    from idsculpt.nodes.common import core_to_image, image_to_core, mask_to_image

    with torch.inference_mode():
        rgba = torch.rand(2, 5, 4, 4)
    core = image_to_core(rgba)
    assert core.shape == (2, 5, 4, 3) and not core.is_inference()
    core.requires_grad_(True)  # usable in an optimisation (inference tensors refuse this)
    torch.testing.assert_close(core.detach(), rgba[..., :3])
    gray = image_to_core(torch.rand(1, 3, 3, 1))
    assert gray.shape == (1, 3, 3, 3) and torch.equal(gray[..., 0], gray[..., 2])
    img = core_to_image(torch.tensor([[[float("nan"), 2.0, -1.0]]]))
    assert img.shape == (1, 1, 1, 3) and img.flatten().tolist() == [0.0, 1.0, 0.0]
    assert mask_to_image(torch.ones(1, 2, 2)).shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="channels"):
        image_to_core(torch.rand(1, 2, 2, 5))


def test_model_folder_registration(comfy_inprocess):
    from idsculpt.nodes.common import IDSCULPT_FOLDER, model_files, model_folder, model_path

    fp = comfy_inprocess.folder_paths
    paths = model_folder(IDSCULPT_FOLDER)
    sandbox_dir = comfy_inprocess.sandbox.model_dir(IDSCULPT_FOLDER)
    assert sandbox_dir in paths and os.path.join(fp.models_dir, IDSCULPT_FOLDER) in paths
    assert model_folder(IDSCULPT_FOLDER) == paths  # idempotent
    np.save(os.path.join(sandbox_dir, "ignored.npy"), np.zeros(1))
    with open(os.path.join(sandbox_dir, "vgg16.safetensors"), "wb") as fh:
        fh.write(b"\0" * 8)
    fp.filename_list_cache.clear()
    assert model_files(IDSCULPT_FOLDER) == ["vgg16.safetensors"]
    assert model_path(IDSCULPT_FOLDER, "vgg16.safetensors") == os.path.join(sandbox_dir, "vgg16.safetensors")
    with pytest.raises(FileNotFoundError, match="panohead.pkl.*idsculpt"):
        model_path(IDSCULPT_FOLDER, "panohead.pkl")
