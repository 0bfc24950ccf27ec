"""Face recognisers that score identity: insightface ArcFace (the one that guided generation) and an
independent one, dlib's ResNet face recogniser (``face-recognition-models`` ships its weights).

Scoring a head with the ArcFace that steered its generation flatters the method (the optimisation
pushed exactly that embedding), so the evaluation also reports dlib's descriptor, trained on other
data with another loss. Both take an RGB uint8 image [H,W,3] and return the largest face's embedding,
or None where no face is detected (a detection miss is itself a result: it is reported per view).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np


@dataclass
class FaceEmbedding:
    embedding: np.ndarray  # [D] float64
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    det_score: float


class FaceRecognizer(Protocol):
    """What the evaluation needs from a recogniser."""

    name: str

    def embed(self, image: np.ndarray) -> Optional[FaceEmbedding]:
        """Largest face of an RGB uint8 [H,W,3] image, or None when no face is found."""
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def to_uint8_rgb(image: Any) -> np.ndarray:
    """[H,W,3] (or [1,H,W,3]) float 0..1 tensor/array or uint8 array → contiguous uint8 RGB [H,W,3]."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().float().numpy()
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image [H,W,3], got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------- dlib (independent recogniser)
DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's documented decision threshold on the 128-D Euclidean distance


def dlib_models_dir() -> Optional[str]:
    """Folder of the ``face_recognition_models`` wheel's model files, or None if not installed.

    ``import face_recognition_models`` needs pkg_resources (gone from new setuptools), so the package
    is located with importlib instead of imported.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        return None
    d = os.path.join(os.path.dirname(spec.origin), "models")
    return d if os.path.isdir(d) else None


class DlibFaceRecognizer:
    """dlib HOG (or CNN) face detector + 5-point alignment + ResNet-29 128-D descriptor."""

    name = "dlib"

    def __init__(
        self, models_dir: Optional[str] = None, detector: str = "hog", max_upsample: int = 1, max_side: int = 800
    ) -> None:
        try:
            import dlib  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("dlib is not installed: pip install dlib-bin face-recognition-models") from e
        import dlib

        models_dir = models_dir or dlib_models_dir()
        if models_dir is None:
            raise FileNotFoundError("dlib face models not found: pip install face-recognition-models")
        files = {
            "sp": "shape_predictor_5_face_landmarks.dat",
            "rec": "dlib_face_recognition_resnet_model_v1.dat",
            "cnn": "mmod_human_face_detector.dat",
        }
        for key in ("sp", "rec") + (("cnn",) if detector == "cnn" else ()):
            if not os.path.isfile(os.path.join(models_dir, files[key])):
                raise FileNotFoundError(f"dlib model {files[key]} missing in {models_dir}")
        if detector not in ("hog", "cnn"):
            raise ValueError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        self.detector_kind = detector
        self._det = (
            dlib.get_frontal_face_detector()
            if detector == "hog"
            else dlib.cnn_face_detection_model_v1(os.path.join(models_dir, files["cnn"]))
        )
        self._sp = dlib.shape_predictor(os.path.join(models_dir, files["sp"]))
        self._rec = dlib.face_recognition_model_v1(os.path.join(models_dir, files["rec"]))
        self.max_upsample = max_upsample
        self.max_side = max_side

    def _detect(self, img: np.ndarray):
        # Upsample only when the plain pass finds nothing and the image is small: HOG's smallest face
        # is ~80 px, which a face in a >= 384 px portrait crop or render already exceeds, and an
        # upsampled pass costs 4x (it would run on every back-of-head view of a sweep).
        ups = self.max_upsample if min(img.shape[:2]) < 384 else 0
        for up in range(ups + 1):
            if self.detector_kind == "hog":
                rects, scores, _ = self._det.run(img, up, 0.0)
                found = list(zip(rects, scores))
            else:
                found = [(d.rect, d.confidence) for d in self._det(img, up)]
            if found:
                return found
        return []

    def embed(self, image: np.ndarray) -> Optional[FaceEmbedding]:
        img = to_uint8_rgb(image)
        scale = min(1.0, self.max_side / max(img.shape[:2]))
        if scale < 1.0:
            # The descriptor is computed on a 150-px aligned chip: large photos only cost detector time.
            import cv2

            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        found = self._detect(img)
        if not found:
            return None
        rect, score = max(found, key=lambda rs: rs[0].area())
        shape = self._sp(img, rect)
        desc = np.asarray(self._rec.compute_face_descriptor(img, shape), dtype=np.float64)
        box = tuple(float(v) / scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
        return FaceEmbedding(desc, box, float(score))


# ---------------------------------------------------------------------- insightface (ArcFace)
class InsightFaceRecognizer:
    """Wraps an insightface ``FaceAnalysis`` (the object IPAdapter_plus passes as INSIGHTFACE).

    Uses the largest face's ``normed_embedding``, as the generation side does.
    """

    name = "insightface"

    def __init__(self, app: Any, det_sizes: Optional[Sequence[int]] = None) -> None:
        if not hasattr(app, "get") or not hasattr(app, "prepare"):
            raise TypeError("InsightFaceRecognizer needs an insightface FaceAnalysis (with .prepare and .get)")
        from ..face.detect import DEFAULT_DET_SIZES

        self.app = app
        self.det_sizes = tuple(det_sizes or DEFAULT_DET_SIZES)

    def embed(self, image: np.ndarray) -> Optional[FaceEmbedding]:
        # Reuse the ID-Embed stage's detection (several detector sizes, largest face first) so the
        # evaluation sees faces exactly as generation did.
        from ..face.detect import detect_faces

        img = to_uint8_rgb(image)
        faces, _, _ = detect_faces(self.app, np.ascontiguousarray(img[..., ::-1]), self.det_sizes)  # BGR
        faces = [f for f in faces if getattr(f, "normed_embedding", None) is not None]
        if not faces:
            return None
        f = faces[0]
        return FaceEmbedding(
            np.asarray(f.normed_embedding, dtype=np.float64), tuple(float(x) for x in f.bbox[:4]), float(f.det_score)
        )


def load_insightface(root: str, name: str = "buffalo_l", provider: str = "CPU") -> Any:
    """FaceAnalysis from ``<root>/models/<name>`` (ComfyUI's models/insightface); never downloads.

    Delegates to the ID-Embed stage's loader so both stages read the same files the same way.
    """
    from ..face.detect import load_face_analysis

    return load_face_analysis(root, name, provider)
