"""IDSculpt Place Head Mesh: stage 1 from any head mesh (beyond the paper; core/panohead/place_mesh.py).

A sibling of PanoHead Invert with the same outputs, so DMTet Sculpt and the texture nodes take either."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io

from ..core.dmtet.sdf_init import axis_rotation
from ..core.panohead.align import align_portrait
from ..core.panohead.place_mesh import AXES, run_stage1_mesh
from .common import ComfyProgress, core_to_image, image_to_core
from .core_mesh import core_mesh_to_head
from .face_nodes import NO_TASK, landmarker_model_input, landmarker_model_path
from .panohead_nodes import face_id_box, stage1_outputs
from .types import FACE_ID, HEAD_MESH
from .validation import UNCONNECTED, connected, known, verdict

log = logging.getLogger("IDSculpt")


class PlaceHeadMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptPlaceHeadMesh",
            display_name="IDSculpt Place Head Mesh",
            category="IDSculpt/geometry",
            description="Stage 1 from a head mesh you bring (the pack's own, a core MESH from another generator or Load 3D, a "
            "GLB/OBJ through Load Head) instead of PanoHead or the template head: aligns the portrait as PanoHead Invert "
            "does, finds the 478 face landmarks on a frontal render of the mesh, places the mesh on the portrait by them "
            "(scale, rotation, translation) and renders its normals and masks from the 40 GAN-view cameras for DMTet "
            "Sculpt. Same outputs as PanoHead Invert. Beyond the paper.",
            inputs=[
                io.Image.Input("portrait", tooltip="The input portrait (one face, roughly frontal). First image of the batch."),
                HEAD_MESH.Input("head", optional=True, tooltip="A head mesh (IDSculpt Load Head, Save/Load of an earlier run, ...)."),
                io.Mesh.Input("mesh", optional=True, tooltip="Or a core MESH (another generator, Load 3D); its first item is "
                              "used. Give head or mesh, not both."),
                io.Combo.Input("up_axis", options=list(AXES), default="+y",
                               tooltip="The mesh's axis pointing to the top of the head (glTF and most generators: +y)."),
                io.Combo.Input("front_axis", options=list(AXES), default="+z",
                               tooltip="The mesh's axis the face looks along (glTF and most generators: +z). If no face is "
                               "found on the render, the mesh is turned wrong: change these two."),
                io.Int.Input("view_resolution", default=256, min=32, max=512, step=16,
                             tooltip="Resolution of the 40 supervision views (normals, masks), as PanoHead Invert's."),
                io.Int.Input("face_index", default=0, min=0, max=63, optional=True,
                             tooltip="Which face of the portrait to align when MediaPipe finds several (0 = the largest). "
                             "Ignored when face_id is connected."),
                FACE_ID.Input("face_id", optional=True, tooltip="ID Embed's face: aligns the face ID Embed chose."),
                landmarker_model_input(optional=True),
            ],
            outputs=stage1_outputs(),
        )

    @classmethod
    def validate_inputs(cls, head=UNCONNECTED, mesh=UNCONNECTED, up_axis=None, front_axis=None) -> bool | str:
        source = axes = None
        if connected(head) == connected(mesh):
            source = ("connect either 'head' (IDSculpt Load Head, ...) or 'mesh' (a core MESH from another generator or "
                      "Load 3D) to IDSculpt Place Head Mesh: " + ("both are connected" if connected(head) else "neither is"))
        if known(up_axis) and known(front_axis):
            try:
                axis_rotation(up_axis, front_axis)
            except ValueError:
                axes = (f"up_axis ({up_axis}) and front_axis ({front_axis}) lie on one axis: the top of the head and the "
                        "direction the face looks along are perpendicular (glTF: up_axis +y, front_axis +z)")
        return verdict(cls, {"up_axis": up_axis, "front_axis": front_axis}, source, axes)

    @classmethod
    def execute(cls, portrait: torch.Tensor, head=None, mesh: Any = None, up_axis: str = "+y", front_axis: str = "+z",
                view_resolution: int = 256, face_index: int = 0, face_id=None, landmarker_model: str = NO_TASK) -> io.NodeOutput:
        import comfy.model_management as mm

        if head is None and mesh is None:
            raise ValueError("IDSculpt Place Head Mesh needs a head mesh: connect 'head' (IDSculpt Load Head, ...) or 'mesh' "
                             "(a core MESH from another generator or Load 3D)")
        if head is not None and mesh is not None:
            raise ValueError("connect either 'head' or 'mesh' to IDSculpt Place Head Mesh, not both")
        source = head if head is not None else core_mesh_to_head(mesh, 0)
        image = (image_to_core(portrait)[0].numpy() * 255).round().astype(np.uint8)
        task = landmarker_model_path(landmarker_model)
        aligned = align_portrait(image, face_index=face_index, model_path=task, face_box=face_id_box(face_id, image.shape[:2]))
        bar = ComfyProgress(2)
        out = run_stage1_mesh(aligned, source, up_axis, front_axis, view_resolution=view_resolution, model_path=task,
                              device=mm.get_torch_device(), interrupt=bar.interrupt)
        bar.progress(2, 2, out.aligned[0])
        info = out.info + f"; face: {aligned.log}"
        log.info("IDSculpt Place Head Mesh: %s", info)
        return io.NodeOutput(out.mesh, out.reference_camera, core_to_image(out.aligned), out.gan_views, info)


NODES = [PlaceHeadMesh]
