"""MediaPipe FaceMesh: the 478 face landmarks of the portrait (468 mesh points + 10 iris points).

ID-Sculpt draws these landmarks, placed on the head mesh, as the control image of the
MediaPipe-face ControlNet in every score-distillation view. Two MediaPipe routes:
  * the legacy ``mediapipe.solutions.face_mesh`` (mediapipe <= 0.10.21; its models ship inside the
    wheel, so nothing to download). Importing ``mediapipe`` runs ``mediapipe/python/solutions/
    drawing_utils.py``, which imports **matplotlib**: a mediapipe installed with ``--no-deps`` needs
    ``pip install matplotlib`` beside it;
  * the Tasks API (``mediapipe.tasks.python.vision.FaceLandmarker``, any recent mediapipe) with a
    ``face_landmarker.task`` model file the user puts in a model folder.

The connection lists used to draw landmark images are read from mediapipe's own python module at
run time (``face_mesh_connections.py`` is plain data: it is loaded by file path, so no matplotlib is
needed for it; the Tasks ``FaceLandmarksConnections`` are the fallback) and carried with the
landmarks, so drawing later needs no mediapipe at all. Nothing is copied into this pack.

Coordinates: ``points`` are [478,3] = (x px, y px, z) in the input image, x right, y down, z into
the image (MediaPipe's z: relative depth, smaller = nearer the camera, scaled like x, i.e. in
units of the image width; we multiply it by the width so the three axes share a unit).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..dependencies import MissingDependency, import_optional
from .detect import box_area, largest_first, to_rgb_uint8

log = logging.getLogger("IDSculpt")

NUM_LANDMARKS = 478
# MediaPipe landmark indices of the 7 keypoints ID-Sculpt ray-casts onto the mesh: outer/inner
# corners of the subject's right eye, inner/outer corners of the left eye, nose tip, mouth corners.
# (The authors' script lists [33, 133, 362, 263, 4, 62, 29]; 62 and 29 are not the mouth corners
# of the FaceMesh topology -- 29 lies under the right eye -- so we use 61 and 291, the lip corners.)
KEYPOINTS_7 = (33, 133, 362, 263, 4, 61, 291)
# Pupil centres (iris centre points of refine_landmarks=True): subject's right, subject's left.
PUPILS = (468, 473)

CONNECTION_GROUPS = ("face_oval", "left_eye", "left_eyebrow", "right_eye", "right_eyebrow", "lips", "left_iris", "right_iris",
                     "tesselation")
_LEGACY_NAMES = {g: f"FACEMESH_{g.upper()}" for g in CONNECTION_GROUPS}
_TASKS_NAMES = {g: f"FACE_LANDMARKS_{g.upper()}" for g in CONNECTION_GROUPS}


#: what the landmarks are for, in the message when mediapipe cannot be imported
LANDMARKS_PURPOSE = "finding the 478 face landmarks"
#: where the Tasks API model goes (ComfyUI's models/mediapipe, registered by the face nodes) and where to get it
TASK_FILE = "face_landmarker.task"
TASK_URL = "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/face_landmarker.task"


def import_mediapipe(*submodules: str, purpose: str = LANDMARKS_PURPOSE) -> Any:
    """``mediapipe`` (and the given submodules), through :func:`core.dependencies.import_optional`.

    On a fresh thread the first time. Why: importing mediapipe keeps the importing call stack alive for
    the life of the process (an exception raised and stored during its import -- protobuf's "no
    attribute 'GetPrototype'" -- holds the traceback). Imported inside a node, that kept the node's
    frame, with its inputs and outputs (a PanoHead model, the head mesh, the GAN views), alive after
    ComfyUI's /free (tests/test_e2e_release.py). A new thread's stack has none of our frames.
    Raises :class:`~core.dependencies.MissingDependency` (an ImportError) naming the module really
    missing: mediapipe itself, matplotlib (imported by mediapipe 0.10.21's legacy solutions), or the
    legacy ``solutions`` of a mediapipe > 0.10.21.
    """
    return import_optional("mediapipe", *submodules, purpose=purpose, fresh_thread=True)


def _mediapipe_dir() -> str | None:
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def mediapipe_connections() -> dict[str, Any]:
    """MediaPipe FaceMesh connection lists {group: [(a, b), ...]} plus "source", read from mediapipe.

    Raises RuntimeError when mediapipe is not installed.
    """
    mp_dir = _mediapipe_dir()
    if mp_dir is not None:
        path = os.path.join(mp_dir, "python", "solutions", "face_mesh_connections.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_idsculpt_mp_face_mesh_connections", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)  # plain frozensets of index pairs, no imports
            out: dict[str, Any] = {g: sorted(tuple(e) for e in getattr(mod, n)) for g, n in _LEGACY_NAMES.items()}
            out["source"] = path
            return out
        try:
            import_mediapipe("tasks.python.vision.face_landmarker")
            from mediapipe.tasks.python.vision.face_landmarker import FaceLandmarksConnections as C

            out = {g: sorted((c.start, c.end) for c in getattr(C, n)) for g, n in _TASKS_NAMES.items()}
            out["source"] = "mediapipe.tasks.python.vision.face_landmarker.FaceLandmarksConnections"
            return out
        except Exception as e:  # pragma: no cover - depends on the mediapipe build
            raise RuntimeError(f"mediapipe is installed but its face connection lists could not be read: {e}") from e
    raise RuntimeError(
        "mediapipe is not installed: it provides the 478 face landmarks and their connection lists. "
        "Install `mediapipe==0.10.21` (models inside the wheel; with numpy 2 use `pip install --no-deps "
        "mediapipe==0.10.21 matplotlib` and protobuf>=6.31,<7) or a newer mediapipe plus a face_landmarker.task file."
    )


def mesh_triangles(connections: dict[str, Any]) -> torch.Tensor:
    """[T,3] triangles of MediaPipe's face mesh, recovered from its tesselation edges as 3-cliques.

    MediaPipe publishes the tesselation as an edge list; every triangle of the canonical face mesh is
    a triple of mutually connected landmarks. Used to tell which landmarks the face itself hides in
    the portrait (z-buffer of the landmark mesh).
    """
    adj: dict[int, set[int]] = {}
    for a, b in connections["tesselation"]:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set()).add(a)
    tris = set()
    for a, nb in adj.items():
        for b in nb:
            if b <= a:
                continue
            for c in nb & adj[b]:
                if c > b:
                    tris.add((a, b, c))
    return torch.tensor(sorted(tris), dtype=torch.long).reshape(-1, 3)


def self_occluded(points: torch.Tensor, triangles: torch.Tensor, eps: float) -> torch.Tensor:
    """[N] bool: landmarks hidden behind the face's own surface in the image they came from.

    points: [N,3] in the image frame (x, y px; z away from the camera). A landmark is hidden when
    a triangle of the landmark mesh that does not contain it covers its pixel more than ``eps``
    nearer the camera (orthographic test: MediaPipe's coordinates are weak-perspective).
    """
    p = points.float()
    a, b, c = p[triangles[:, 0]], p[triangles[:, 1]], p[triangles[:, 2]]  # [T,3]
    v0, v1 = (b - a)[:, :2], (c - a)[:, :2]
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = den.abs() > 1e-9
    den = torch.where(ok, den, torch.ones_like(den))
    q = p[:, None, :2] - a[None, :, :2]  # [N,T,2]
    l1 = (q[..., 0] * v1[:, 1] - v1[:, 0] * q[..., 1]) / den
    l2 = (v0[:, 0] * q[..., 1] - q[..., 0] * v0[:, 1]) / den
    inside = ok & (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1)
    z = a[None, :, 2] + l1 * (b - a)[None, :, 2] + l2 * (c - a)[None, :, 2]
    own = (triangles[None] == torch.arange(p.shape[0])[:, None, None]).any(-1)
    return (inside & ~own & (z < p[:, None, 2] - eps)).any(dim=1)


def face_oval_polygon(connections: dict[str, Any]) -> list[int]:
    """The face-oval edges chained into one closed loop of landmark indices."""
    edges = [tuple(e) for e in connections["face_oval"]]
    nxt: dict[int, int] = {}
    for a, b in edges:
        nxt[a] = b
    start = edges[0][0]
    loop = [start]
    while True:
        b = nxt.get(loop[-1])
        if b is None or b == start or len(loop) > len(edges):
            break
        loop.append(b)
    return loop


@dataclass
class FaceLandmarks2D:
    """MediaPipe landmarks of one face of an image.

    points: [478,3] (x px, y px, z px-scaled), see module docstring. image_size: (H, W).
    connections: the MediaPipe connection lists (``mediapipe_connections()``), carried along.
    """

    points: torch.Tensor
    image_size: tuple[int, int]
    connections: dict[str, Any]
    index: int = 0
    num_faces: int = 1
    backend: str = "legacy"
    log: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def normalized(self) -> torch.Tensor:
        """[478,3] as MediaPipe returns them (x / W, y / H, z / W)."""
        h, w = self.image_size
        return self.points / torch.tensor([w, h, w], dtype=self.points.dtype)

    def keypoints7(self) -> torch.Tensor:
        return self.points[list(KEYPOINTS_7)]

    def box(self) -> tuple[float, float, float, float]:
        p = self.points
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def _find_task_file(model_path: str | None) -> str | None:
    if model_path and os.path.isfile(model_path):
        return model_path
    if model_path and os.path.isdir(model_path):
        cand = os.path.join(model_path, "face_landmarker.task")
        if os.path.isfile(cand):
            return cand
    return None


def _run_legacy(rgb: np.ndarray, max_faces: int, min_confidence: float, purpose: str) -> list[np.ndarray]:
    try:
        import_mediapipe("python.solutions.face_mesh", purpose=purpose)  # mediapipe/__init__ needs matplotlib
        from mediapipe.python.solutions import face_mesh
    except ImportError as e:  # MissingDependency already names the missing module; anything else is wrapped
        if isinstance(e, MissingDependency):
            raise
        raise MissingDependency(f"mediapipe's legacy FaceMesh cannot be imported ({purpose} needs it): {e}",
                                name=getattr(e, "name", None)) from e
    with warnings.catch_warnings():  # protobuf deprecation chatter inside mediapipe's graph setup
        warnings.simplefilter("ignore", DeprecationWarning)
        with face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
                                min_detection_confidence=min_confidence) as fm:
            res = fm.process(rgb)
    faces = res.multi_face_landmarks or []
    return [np.array([[lm.x, lm.y, lm.z] for lm in f.landmark], dtype=np.float32) for f in faces]


def _run_tasks(rgb: np.ndarray, max_faces: int, min_confidence: float, task_file: str, purpose: str) -> list[np.ndarray]:
    mp = import_mediapipe("tasks.python", "tasks.python.vision", purpose=purpose)
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python import vision

    opts = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=task_file), num_faces=max_faces,
                                        min_face_detection_confidence=min_confidence,
                                        running_mode=vision.RunningMode.IMAGE)
    with vision.FaceLandmarker.create_from_options(opts) as lm:
        res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    return [np.array([[p.x, p.y, p.z] for p in f], dtype=np.float32) for f in res.face_landmarks]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def _landmark_box(p: np.ndarray) -> tuple[float, float, float, float]:
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def _fmt_box(b: Sequence[float]) -> str:
    return "[" + ", ".join(str(round(float(v))) for v in b[:4]) + "]"


def detect_landmarks(
    image: Any,
    face_index: int = 0,
    max_faces: int = 8,
    backend: str = "auto",
    model_path: str | None = None,
    face_box: Sequence[float] | None = None,
    min_confidence: float = 0.5,
    purpose: str = LANDMARKS_PURPOSE,
) -> FaceLandmarks2D:
    """478 MediaPipe landmarks of one face of ``image`` (the largest by default).

    The pack's one landmark detector (Landmark Render, Geo Supervision and PanoHead's alignment).
    backend: "auto" (legacy FaceMesh if importable, else the Tasks API with ``model_path``), "legacy" or
    "tasks". model_path: a ``face_landmarker.task`` file or a folder holding one (Tasks API only).
    ``face_index`` counts faces by landmark-box area, largest first (``detect.largest_first``, the order
    ID Embed counts insightface's boxes in). ``face_box`` (x1, y1, x2, y2 in this image's pixels, e.g. the
    box of ID Embed's face) chooses the face whose landmark box overlaps it most instead.
    ``min_confidence``: MediaPipe's face-detection threshold. ``purpose`` names the caller in messages.
    Refuses an image below ``detect.MIN_IMAGE_SIDE`` px with ID Embed's message.
    """
    rgb, notes = to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    task_file = _find_task_file(model_path)
    faces: list[np.ndarray] | None = None
    used = backend
    legacy_error: ImportError | None = None
    tasks_error = ""
    if backend in ("auto", "legacy"):
        try:
            faces = _run_legacy(rgb, max_faces, min_confidence, purpose)
            used = "legacy"
        except ImportError as e:
            legacy_error = e
            if backend == "legacy":
                raise MissingDependency(f"MediaPipe legacy face mesh is not available: {e}", name=getattr(e, "name", None)) from e
    if faces is None and backend in ("auto", "tasks"):
        if task_file is None:
            tasks_error = (f"no {TASK_FILE} chosen" if not model_path else
                           f"no {TASK_FILE} at {model_path!r}")
        else:
            try:
                faces = _run_tasks(rgb, max_faces, min_confidence, task_file, purpose)
                used = "tasks"
            except ImportError as e:
                tasks_error = f"mediapipe's Tasks API cannot be imported: {e}"
    if faces is None:
        parts = ([f"legacy FaceMesh: {legacy_error}"] if legacy_error is not None else []) + [f"Tasks API: {tasks_error}"]
        raise MissingDependency(
            f"No MediaPipe face landmarker available ({purpose}). " + "; ".join(parts) + ". Fix either: the legacy "
            "FaceMesh needs mediapipe==0.10.21 (its models ship inside the wheel; pip install --no-deps "
            "mediapipe==0.10.21 matplotlib, see the README install), or, with any newer mediapipe, put "
            f"{TASK_FILE} ({TASK_URL}) into ComfyUI's models/mediapipe folder and choose it in the node's "
            "landmarker_model input.",
            name=getattr(legacy_error, "name", None) or "mediapipe",
        )
    if not faces:
        raise RuntimeError(
            f"MediaPipe found no face in the portrait ({w}x{h} px). Use a photo with one clearly visible, roughly "
            f"frontal face (not in profile, not covered), and crop closer if the face is small in the frame."
        )
    scale = np.array([w, h, w], dtype=np.float32)
    pts = [f[:NUM_LANDMARKS] * scale for f in faces]
    boxes = [_landmark_box(p) for p in pts]
    order = largest_first(boxes)
    n = len(pts)
    sizes = [round(box_area(boxes[i]) ** 0.5) for i in order]
    how = ""
    if face_box is not None:
        fb = [float(v) for v in list(face_box)[:4]]
        ious = [box_iou(boxes[i], fb) for i in order]
        face_index = int(np.argmax(ious))
        if ious[face_index] <= 0.0 and n > 1:
            raise ValueError(
                f"the face chosen by ID Embed (box {_fmt_box(fb)} px) overlaps none of the {n} faces MediaPipe found "
                f"(boxes {', '.join(_fmt_box(boxes[i]) for i in order)}, largest first): give ID Embed and this node the "
                "same portrait, or disconnect face_id and choose the face with face_index."
            )
        how = (f"the face ID Embed chose (box overlap {ious[face_index]:.2f})" if ious[face_index] > 0 else
               f"the only face; it does not overlap ID Embed's box {_fmt_box(fb)}: did ID Embed see this portrait?")
    if not 0 <= face_index < n:
        raise ValueError(f"face_index {face_index} is out of range: {n} face(s) found (indices 0..{n - 1}, largest first)")
    chosen = pts[order[face_index]]
    if chosen.shape[0] != NUM_LANDMARKS:
        raise RuntimeError(f"MediaPipe returned {chosen.shape[0]} landmarks, expected 478 (refine_landmarks=True)")
    lines = [f"MediaPipe ({used}) found {n} face(s)"]
    if n > 1:
        lines.append(
            f"using face #{face_index}" + (" (the largest)" if face_index == 0 else "")
            + f" of {n} (largest first, box sizes {sizes} px)" + (f": {how}" if how else "")
            + (". Set ID Embed's face_index to use another" if face_box is not None else ". Set face_index to use another")
            + ", or crop the portrait to one person."
        )
        log.warning("IDSculpt landmarks: %s", "; ".join(lines))
    elif how and "did ID Embed" in how:
        lines.append(how)
    return FaceLandmarks2D(
        points=torch.from_numpy(np.ascontiguousarray(chosen)),
        image_size=(h, w),
        connections=mediapipe_connections(),
        index=face_index,
        num_faces=n,
        backend=used,
        log="; ".join(notes + lines),
        notes=notes,
    )
