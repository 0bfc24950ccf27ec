"""One name per thing on the node sockets (issue 21): every head-mesh output is ``head``, the stage-1 crop is
``aligned_portrait``, the portrait's camera is ``reference_camera``. Inputs keep the names saved workflows use
(ComfyUI 0.3.64 matches a prompt's inputs by name and has no aliases), so the two ``head_mesh`` inputs stay,
listed here; outputs are linked by slot, so renaming them keeps saved workflows loading."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.comfy

#: HEAD_MESH inputs not called "head": kept under the names saved workflows hold
KEPT_INPUT_NAMES = {("IDSculptDMTetSculpt", "head_mesh"), ("IDSculptLandmarkRender", "head_mesh")}


@pytest.fixture(scope="module")
def schemas(comfy_inprocess):
    return {nid: cls.GET_SCHEMA() for nid, cls in comfy_inprocess.load_pack_nodes().items()}


def test_head_mesh_sockets_are_called_head(schemas):
    outputs = {(nid, o.display_name) for nid, s in schemas.items() for o in s.outputs if o.get_io_type() == "IDSCULPT_HEAD_MESH"}
    assert {name for _, name in outputs} == {"head"}, sorted(outputs)
    assert len(outputs) >= 7  # Load Head, MESH To Head, Invert, Place Head Mesh, Sculpt, Inpaint, Refine
    inputs = {(nid, i.id) for nid, s in schemas.items() for i in s.inputs if i.get_io_type() == "IDSCULPT_HEAD_MESH"}
    assert {x for x in inputs if x[1] != "head"} == KEPT_INPUT_NAMES


def test_camera_and_portrait_sockets_share_their_names(schemas):
    cams = {(nid, o.display_name) for nid, s in schemas.items() for o in s.outputs if o.get_io_type() == "IDSCULPT_CAMERA"}
    assert {name for _, name in cams} == {"reference_camera"}
    cam_inputs = {i.id for s in schemas.values() for i in s.inputs if i.get_io_type() == "IDSCULPT_CAMERA"}
    assert cam_inputs == {"reference_camera"}
    stage1 = [[o.display_name for o in schemas[n].outputs] for n in ("IDSculptPanoHeadInvert", "IDSculptPlaceHeadMesh")]
    assert stage1[0] == stage1[1] == ["head", "reference_camera", "aligned_portrait", "gan_views", "info"]
