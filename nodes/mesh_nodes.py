"""Foundation nodes: save/load the pack's head mesh, and convert it to/from core ComfyUI ``MESH``.

The head mesh (``IDSCULPT_HEAD_MESH``, a core.mesh.HeadMesh) carries UVs and a texture. Core
``MESH`` is batched positions [B,N,3] + faces [B,M,3] on ComfyUI 0.3.64; newer ComfyUI's also carries
UVs, a texture, normals, vertex colours and per-item counts, and the bridge (nodes/core_mesh.py)
passes them where the host has them, so core Save 3D, DecimateMesh, UnwrapMesh, bakes and Preview3D
get the textured head. Both use the glTF frame (+y up, the face looking along +z).

Display in the UI: ``IDSculpt Save Head`` writes a textured GLB into ComfyUI's output folder and
returns its path relative to output/ — the STRING core ``Preview3D`` takes — and reports the file
the way core ``SaveGLB`` does (``ui["3d"]``), plus ``ui["result"]`` as ``Preview3D`` does. Where the
host has File3D types it also returns the GLB as a ``File3DGLB`` (``model_3d``).
"""
from __future__ import annotations

import os
from typing import Any

import torch

import folder_paths
from comfy_api.latest import io

from ..core.mesh import REFERENCE_CAMERA_EXTRA, HeadMesh, write_glb_extras
from .core_mesh import _FallbackMesh, core_mesh_class, core_mesh_to_head, head_to_core_mesh  # noqa: F401 (re-exported)
from .types import CAMERA, HEAD_MESH

MESH_EXTENSIONS = (".glb", ".gltf", ".obj")


# --------------------------------------------------------------------------- File3D (newer ComfyUI)
def file3d_glb_type():
    """``io.File3DGLB`` where the host has the File3D types (newer ComfyUI), else None."""
    if not hasattr(io, "File3DGLB"):
        return None
    try:
        from comfy_api.latest import Types
    except ImportError:
        return None
    return io.File3DGLB if getattr(Types, "File3D", None) is not None else None


def _file3d_outputs() -> list:
    glb = file3d_glb_type()
    return [] if glb is None else [glb.Output(display_name="model_3d", tooltip="The saved GLB as a 3D file (Preview3D, Save 3D Model).")]


def file3d(path: str) -> Any:
    from comfy_api.latest import Types

    return Types.File3D(path, "glb")


# --------------------------------------------------------------------------- files
def _mesh_files() -> list[str]:
    """.glb/.gltf/.obj files under input/ (plain names) and output/ (suffixed ' [output]')."""
    files: list[str] = []
    for base, suffix in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(), " [output]")):
        if not os.path.isdir(base):
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.lower().endswith(MESH_EXTENSIONS):
                    found.append(os.path.relpath(os.path.join(dirpath, name), base).replace("\\", "/"))
        files.extend(f + suffix for f in sorted(found))
    return files


def _resolve(file: str) -> str:
    return folder_paths.get_annotated_filepath(file)


# --------------------------------------------------------------------------- nodes
class SaveHead(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptSaveHead",
            display_name="IDSculpt Save Head",
            category="IDSculpt/mesh",
            description="Write the head as a textured GLB (and OBJ+MTL+PNG on request) into ComfyUI's output folder. "
                        "Connect model_file to Preview3D to look at it in the 3D viewer.",
            inputs=[
                HEAD_MESH.Input("head", tooltip="The textured head mesh to save."),
                io.String.Input("filename_prefix", default="IDSculpt/head",
                                tooltip="File name prefix inside ComfyUI's output folder; may contain a subfolder (e.g. IDSculpt/head) "
                                        "and %date:yyyy-MM-dd%-style formatting. A counter is appended."),
                io.Boolean.Input("save_obj", default=False,
                                 tooltip="Also write an OBJ with its MTL material and PNG texture beside the GLB (for Blender, ZBrush, ...)."),
                CAMERA.Input("reference_camera", optional=True,
                             tooltip="The portrait's camera in the head's frame (DMTet Sculpt's reference_camera): kept in the GLB "
                                     "(asset.extras), so scripts/evaluate_head.py renders the reference view without being told."),
            ],
            outputs=[
                io.String.Output(display_name="model_file", tooltip="GLB path relative to the output folder: the input core Preview3D takes."),
                io.Mesh.Output(display_name="mesh", tooltip="The head as a core MESH for core 3D nodes (SaveGLB, ...): with UVs, texture and "
                                                          "normals on ComfyUI releases whose MESH carries them, geometry only before."),
            ] + _file3d_outputs(),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, head: HeadMesh, filename_prefix: str, save_obj: bool = False, reference_camera=None) -> io.NodeOutput:
        if not isinstance(head, HeadMesh):
            raise ValueError(f"head must be an IDSCULPT_HEAD_MESH, got {type(head).__name__}")
        if head.faces.numel() == 0:
            raise ValueError("the head mesh has no faces: nothing to save")
        if not torch.isfinite(head.vertices).all():
            raise ValueError("the head mesh has non-finite vertex positions (NaN/inf): the stage that made it diverged")
        output_dir = folder_paths.get_output_directory()
        full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix or "IDSculpt/head", output_dir)
        base = f"{filename}_{counter:05}_"
        head = head.detach().to("cpu")
        glb = head.save(os.path.join(full_folder, base + ".glb"))
        if reference_camera is not None:
            cam = reference_camera.first()
            label = [round(float(x), 7) for x in cam.eg3d_label()[0].tolist()]
            write_glb_extras(glb, {REFERENCE_CAMERA_EXTRA: {"eg3d_label": label, "height": cam.height, "width": cam.width}})
        results = [{"filename": os.path.basename(glb), "subfolder": subfolder, "type": "output"}]
        if save_obj:
            obj = head.save(os.path.join(full_folder, base + ".obj"))
            results.append({"filename": os.path.basename(obj), "subfolder": subfolder, "type": "output"})
        model_file = "/".join(p for p in (subfolder.replace("\\", "/"), os.path.basename(glb)) if p)
        ui = {"3d": results, "result": [model_file, None]}
        extra = (file3d(glb),) if file3d_glb_type() is not None else ()
        return io.NodeOutput(model_file, head_to_core_mesh(head), *extra, ui=ui)


class LoadHead(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptLoadHead",
            display_name="IDSculpt Load Head",
            category="IDSculpt/mesh",
            description="Load a .glb/.gltf/.obj head (with its UVs and texture) from ComfyUI's input or output folder.",
            inputs=[
                io.Combo.Input("file", options=_mesh_files(), upload=io.UploadType.model,
                               tooltip="Mesh file in the input folder, or in the output folder (marked [output]), e.g. a head saved earlier."),
            ],
            outputs=[HEAD_MESH.Output(display_name="head", tooltip="The loaded head mesh.")],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str) -> Any:
        path = _resolve(file)
        try:
            st = os.stat(path)
            return f"{path}:{st.st_mtime_ns}:{st.st_size}"  # reload when the file changes
        except OSError:
            return path

    @classmethod
    def execute(cls, file: str) -> io.NodeOutput:
        path = _resolve(file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"mesh file {file!r} not found (looked at {path}); put a .glb/.obj in ComfyUI's input folder")
        if not path.lower().endswith(MESH_EXTENSIONS):
            raise ValueError(f"{file!r} is not a mesh file: use .glb, .gltf or .obj")
        try:
            head = HeadMesh.load(path)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"could not load head mesh {file!r}: {exc}. Is the file complete and a valid GLB/OBJ?") from exc
        except Exception as exc:  # trimesh/numpy errors on malformed data
            raise ValueError(f"could not load head mesh {file!r}: the file is corrupt or not a triangle mesh ({type(exc).__name__}: {exc})") from exc
        if head.faces.numel() == 0 or head.vertices.shape[0] < 3:
            raise ValueError(f"head mesh {file!r} holds no triangles")
        return io.NodeOutput(head)


class HeadToMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptHeadToMesh",
            display_name="IDSculpt Head To MESH",
            category="IDSculpt/mesh",
            description="Convert the head mesh to core ComfyUI MESH: with UVs (split at seams), texture and normals where this "
                        "ComfyUI's MESH carries them, positions and faces only on older releases.",
            inputs=[HEAD_MESH.Input("head", tooltip="The head mesh to convert.")],
            outputs=[io.Mesh.Output(display_name="mesh", tooltip="Core MESH with a batch of one.")],
        )

    @classmethod
    def execute(cls, head: HeadMesh) -> io.NodeOutput:
        return io.NodeOutput(head_to_core_mesh(head))


class MeshToHead(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptMeshToHead",
            display_name="IDSculpt MESH To Head",
            category="IDSculpt/mesh",
            description="Convert one mesh of a core ComfyUI MESH batch into the pack's head mesh, with its UVs, texture and "
                        "vertex colours where the MESH has them (padded batches are cut to each mesh's own size).",
            inputs=[
                io.Mesh.Input("mesh", tooltip="A core MESH, e.g. from VoxelToMesh (Hunyuan3D)."),
                io.Int.Input("index", default=0, min=0, max=4096, tooltip="Which mesh of the batch to take (0 = first)."),
            ],
            outputs=[HEAD_MESH.Output(display_name="head", tooltip="The head mesh (textured when the MESH was).")],
        )

    @classmethod
    def execute(cls, mesh: Any, index: int = 0) -> io.NodeOutput:
        return io.NodeOutput(core_mesh_to_head(mesh, index))


NODES = [SaveHead, LoadHead, HeadToMesh, MeshToHead]
