"""Face nodes: insightface loader, ID Embed (ArcFace identity) and Landmark Render (3D landmarks).

Thin adapters: the work is in ``core.face.detect``, ``core.face.landmarks`` and ``core.face.align``.
The loader outputs ComfyUI_IPAdapter_plus's ``INSIGHTFACE`` type (an insightface ``FaceAnalysis``),
so its loader and ours are interchangeable.
"""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

import folder_paths

from ..core.camera import preview_cameras
from ..core.face.align import align_landmarks_to_mesh
from ..core.face.detect import INSIGHTFACE_MODEL_NAMES, SAME_PERSON_THRESHOLD, face_id_from_photos, load_face_analysis
from ..core.face.landmarks import detect_landmarks
from .common import core_to_image, model_folder, model_path
from .types import CAMERA, FACE_ID, HEAD_MESH, LANDMARKS

#: IPAdapter_plus's socket type for an insightface FaceAnalysis: same name, so the packs interconnect.
INSIGHTFACE = io.Custom("INSIGHTFACE")
INSIGHTFACE_FOLDER = "insightface"
#: model folder searched for MediaPipe Tasks ``face_landmarker.task`` files (newer mediapipe only).
MEDIAPIPE_FOLDER = "mediapipe"
PREVIEW_AZIMUTHS = (0.0, 45.0, -45.0, 90.0, -90.0, 180.0)


def insightface_roots() -> list[str]:
    """Folders that hold ``models/<name>/`` insightface packs: ComfyUI's models/insightface (as
    IPAdapter_plus uses it) plus any ``insightface`` paths from extra_model_paths.yaml."""
    roots = [os.path.join(folder_paths.models_dir, INSIGHTFACE_FOLDER)]
    if INSIGHTFACE_FOLDER in folder_paths.folder_names_and_paths:
        roots += [p for p in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER) if p not in roots]
    return roots


def insightface_model_names() -> list[str]:
    names = list(INSIGHTFACE_MODEL_NAMES)
    for root in insightface_roots():
        d = os.path.join(root, "models")
        if os.path.isdir(d):
            names += sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)) and n not in names)
    return names


def _root_for(name: str) -> str:
    for root in insightface_roots():
        if os.path.isdir(os.path.join(root, "models", name)):
            return root
    return insightface_roots()[0]


class InsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptInsightFaceLoader",
            display_name="IDSculpt InsightFace Loader",
            category="IDSculpt/loaders",
            description="Loads an insightface model pack (face detector + ArcFace recogniser) from "
            "models/insightface/models/<name>. Compatible with IPAdapter_plus's INSIGHTFACE sockets.",
            inputs=[
                io.Combo.Input("model_name", options=insightface_model_names(), default="buffalo_l",
                               tooltip="Folder under models/insightface/models/ with the ONNX files. ID-Sculpt uses "
                               "buffalo_l (ArcFace R50); antelopev2 (R100) also works with FaceID adapters."),
                io.Combo.Input("provider", options=["CPU", "CUDA", "ROCM", "CoreML"], default="CPU",
                               tooltip="onnxruntime device. The models are small: CPU is fine and keeps VRAM for diffusion."),
            ],
            outputs=[INSIGHTFACE.Output(display_name="insightface")],
        )

    @classmethod
    def execute(cls, model_name: str, provider: str) -> io.NodeOutput:
        return io.NodeOutput(load_face_analysis(_root_for(model_name), model_name, provider))


class IDEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptIDEmbed",
            display_name="IDSculpt ID Embed",
            category="IDSculpt/face",
            description="The portrait's identity: insightface detection (retried over several detector sizes) "
            "and the normalised ArcFace embedding of the chosen face. Given a batch of photos of one person "
            "(e.g. from core 'Image Batch'), it checks they are the same person, drops strangers with a message "
            "and keeps every photo's embedding for the ID adapter; the reference photo drives the 3D alignment.",
            inputs=[
                io.Image.Input("image", tooltip="The portrait, or a batch of photos of one person (up to ~5, as FaceID "
                               "Portrait was trained; join photos with core 'Image Batch', which resizes them to the first "
                               "one's size). Grayscale and RGBA are accepted (alpha composited on white); at least 128 px on "
                               "the shorter side."),
                INSIGHTFACE.Input("insightface", tooltip="An insightface model pack from IDSculpt InsightFace Loader or "
                                  "IPAdapter_plus's InsightFace loader (buffalo_l recommended)."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Which face when there are several: 0 = the largest, 1 = the next largest, ... (box "
                             "area), in every photo. Connect face_id to PanoHead Invert so the head's geometry comes from the "
                             "same face."),
                io.Int.Input("reference_index", default=0, min=0, max=63, optional=True,
                             tooltip="With several photos: which one is the reference view (alignment, projection, LPIPS). "
                             "PanoHead Invert, given this face_id, picks this photo from the batch. 0 = the first."),
                io.Float.Input("same_person_threshold", default=SAME_PERSON_THRESHOLD, min=-1.0, max=1.0, step=0.01,
                               optional=True,
                               tooltip="With several photos: a photo whose mean ArcFace cosine to the others is below this "
                               "is taken for another person and dropped (named in 'info'). Same person typically scores "
                               "0.4-0.8, different people below 0.2. -1 keeps every photo."),
            ],
            outputs=[
                FACE_ID.Output(display_name="face_id"),
                io.Image.Output(display_name="aligned_face"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, insightface, face_index: int, reference_index: int = 0,
                same_person_threshold: float = SAME_PERSON_THRESHOLD) -> io.NodeOutput:
        fid = face_id_from_photos(insightface, image, face_index=face_index, reference_index=reference_index,
                                  same_person_threshold=same_person_threshold)
        crops = fid.photo_crops if fid.photo_crops is not None else fid.aligned_crop[None]
        return io.NodeOutput(fid, core_to_image(crops), fid.log)


NO_TASK = "(none)"


def _task_files() -> list[str]:
    try:
        model_folder(MEDIAPIPE_FOLDER, {".task"})
        return [NO_TASK] + list(folder_paths.get_filename_list(MEDIAPIPE_FOLDER))
    except Exception:  # folder registration failing must not hide the node
        return [NO_TASK]


def landmarker_model_input(optional: bool = False) -> io.Combo.Input:
    """The MediaPipe Tasks model choice, shared by every node that finds the 478 landmarks."""
    return io.Combo.Input("landmarker_model", options=_task_files(), default=NO_TASK, optional=optional,
                          tooltip="(none): mediapipe 0.10.21's built-in legacy FaceMesh (models inside the wheel). With a "
                          "newer mediapipe (no legacy FaceMesh; e.g. a Python or numpy that mediapipe 0.10.21 does not "
                          "support), put face_landmarker.task into models/mediapipe and choose it here: the Tasks API then "
                          "finds the same 478 landmarks.")


def landmarker_model_path(choice: str | None) -> str | None:
    """Full path of the chosen face_landmarker.task, or None for the legacy FaceMesh."""
    if choice in (None, "", NO_TASK):
        return None
    return model_path(MEDIAPIPE_FOLDER, choice, key="mediapipe_task")


class LandmarkRender(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptLandmarkRender",
            display_name="IDSculpt Landmark Render",
            category="IDSculpt/face",
            description="MediaPipe's 478 face landmarks of the portrait, placed on the head mesh (ray-cast keypoints + "
            "RANSAC similarity), drawn as MediaPipe-face ControlNet landmark images from a few azimuths.",
            inputs=[
                io.Image.Input("image", tooltip="The aligned portrait: the reference view of the head mesh."),
                # "head_mesh", not "head": saved prompts name inputs, and ComfyUI 0.3.64 has no input aliases
                HEAD_MESH.Input("head_mesh", tooltip="The head mesh to place the landmarks on (e.g. from PanoHead Invert)."),
                CAMERA.Input("reference_camera", tooltip="The portrait's camera in the mesh's frame (first camera used)."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="Which face when MediaPipe finds several (0 = the largest, counted like ID Embed). Keep "
                             "0 on PanoHead Invert's aligned portrait: that crop holds the one face PanoHead Invert chose "
                             "(choose the face there, with its face_index or ID Embed's face_id)."),
                io.Int.Input("preview_resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Size of the preview landmark images (azimuths 0, 45, -45, 90, -90, 180)."),
                landmarker_model_input(),
                io.Boolean.Input("occlusion", default=False, optional=True,
                                 tooltip="Off (ID-Sculpt): front and side views draw every landmark contour, hidden or not, "
                                 "as the landmark ControlNet was trained; views from behind draw only the face oval. On (not "
                                 "the authors'): front/side views drop landmarks turned away from the camera or hidden by the "
                                 "mesh. Applies to the preview and to every hint drawn from these landmarks (ISD)."),
            ],
            outputs=[
                LANDMARKS.Output(display_name="landmarks"),
                io.Image.Output(display_name="preview"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, head_mesh, reference_camera, face_index: int, preview_resolution: int,
                landmarker_model: str = NO_TASK, occlusion: bool = False) -> io.NodeOutput:
        lm2d = detect_landmarks(image, face_index=face_index, model_path=landmarker_model_path(landmarker_model))
        lm3d = align_landmarks_to_mesh(lm2d, head_mesh, reference_camera.first())
        lm3d.occlusion = bool(occlusion)
        cams = preview_cameras(PREVIEW_AZIMUTHS, preview_resolution, fov=30.0, elevation=0.0, frame=head_mesh.vertices)
        preview = lm3d.draw(cams)
        info = f"{lm2d.log}; {lm3d.log}; hints: {'occluded landmarks hidden (not the authors)' if occlusion else 'all contours on front/side views (authors)'}"
        return io.NodeOutput(lm3d, core_to_image(preview), info)


NODES = [InsightFaceLoader, IDEmbed, LandmarkRender]
