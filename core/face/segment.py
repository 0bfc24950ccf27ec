"""The head mask of the aligned portrait, from the portrait itself (ID-Sculpt's face-parsing ``mask``).

What the authors compute (``preprocess/PanoHead/face_parsing/evaluate.py``, ``save_mask``): BiSeNet
face parsing (CelebAMask-HQ, 19 classes) of the 512² crop, then
  * ``mask`` = parsing > 0, i.e. every class but the background -- skin, brows, eyes, glasses, ears,
    earrings, nose, mouth, lips, neck, necklace, cloth, hair and hat -- eroded once by a 5×5 kernel.
    So it is the whole visible person: the neck and the clothes at the bottom of the crop included;
  * ``face_mask`` = that mask minus glasses (6), ears (7, 8), neck (14), necklace (15), cloth (16),
    hair (17) and hat (18).
``mask`` restricts the texture stage (the portrait is multiplied by it, it is where the portrait is
projected and where the refinement fits it); ``face_mask`` is the geometry stage's reference region.

Here, without a parsing network in the pack, ``mask`` is the MediaPipe selfie segmentation (person vs
background; its model files ship inside the mediapipe<=0.10.21 wheel beside the face mesh, so
nothing is downloaded) united with the filled MediaPipe face oval (so the face is always inside even
where the segmenter hesitates), thresholded at 0.5 and eroded by 5×5 at 512 px like the authors'. No
cut below the chin: parsing > 0 keeps the neck and the clothes, and so does this mask.
``face_mask`` stays the landmark face oval (``face_oval_mask``): like the authors' it leaves out hair,
ears and neck (it keeps the brows, eyes, nose, mouth and the forehead below the hairline).

Extension point: a real face-parsing model plugs in as a :class:`PortraitSegmenter` (any callable
rgb uint8 [H,W,3] -> foreground probability [H,W]), or its masks are given to Geo Supervision's
``head_mask`` / ``face_mask`` inputs. None is shipped.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .landmarks import _mediapipe_dir, face_oval_polygon, import_mediapipe

log = logging.getLogger("IDSculpt")

# The segmenter's output is a foreground probability; 0.5 is its decision boundary.
SEGMENTATION_THRESHOLD = 0.5
# The authors erode parsing > 0 once with a 5×5 kernel on the 512² crop.
PARSING_EROSION_KERNEL = 5
PARSING_RESOLUTION = 512
# the selfie-segmentation graph of the legacy solution and the model it loads (both inside the wheel)
_SELFIE_FILES = ("selfie_segmentation_cpu.binarypb", "selfie_segmentation.tflite")


class SegmenterUnavailable(RuntimeError):
    """No portrait segmenter can run here (mediapipe missing, no legacy solutions, model not in the wheel)."""


class PortraitSegmenter(Protocol):
    name: str

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """rgb uint8 [H,W,3] -> foreground (person) probability float [H,W] in 0..1."""
        ...


class MediaPipeSelfieSegmenter:
    """MediaPipe's legacy ``solutions.selfie_segmentation`` (general 256×256 model), CPU, offline."""

    name = "MediaPipe selfie segmentation"

    def __init__(self) -> None:
        mp_dir = _mediapipe_dir()
        if mp_dir is None:
            raise SegmenterUnavailable("mediapipe is not installed")
        model_dir = os.path.join(mp_dir, "modules", "selfie_segmentation")
        missing = [f for f in _SELFIE_FILES if not os.path.isfile(os.path.join(model_dir, f))]
        if missing:  # checked first: the solution must never try to fetch a model at run time
            raise SegmenterUnavailable(f"mediapipe has no selfie-segmentation model in its wheel ({', '.join(missing)} "
                                       f"missing under {model_dir}); mediapipe<=0.10.21 ships it")
        try:
            import_mediapipe("python.solutions.selfie_segmentation")
            from mediapipe.python.solutions import selfie_segmentation
        except Exception as e:  # newer mediapipe without the legacy solutions, or a broken install
            raise SegmenterUnavailable(f"mediapipe legacy solutions unavailable ({type(e).__name__}: {e})") from e
        self._module = selfie_segmentation

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # protobuf deprecation chatter inside mediapipe's graph setup
            warnings.simplefilter("ignore", DeprecationWarning)
            with self._module.SelfieSegmentation(model_selection=0) as seg:
                res = seg.process(np.ascontiguousarray(rgb[..., :3]))
        prob = res.segmentation_mask
        if prob is None or prob.shape[:2] != rgb.shape[:2]:
            raise RuntimeError(f"MediaPipe selfie segmentation returned no mask of the image's size ({rgb.shape[1]}x{rgb.shape[0]})")
        return np.nan_to_num(prob.astype(np.float32), nan=0.0).clip(0, 1)


def load_portrait_segmenter() -> PortraitSegmenter:
    """The default segmenter; raises :class:`SegmenterUnavailable` saying why when it cannot run."""
    return MediaPipeSelfieSegmenter()


def erosion_kernel(height: int, width: int) -> int:
    """The authors' 5×5 erosion at 512 px, scaled to this size (odd, >= 1: 3 at 256, 1 at 128)."""
    return 2 * int(round((PARSING_EROSION_KERNEL // 2) * max(height, width) / PARSING_RESOLUTION)) + 1


def erode(mask: np.ndarray, kernel: int) -> np.ndarray:
    """cv2.erode with a kernel×kernel square, as the authors' (pixels outside the frame do not erode)."""
    import cv2

    if kernel <= 1:
        return mask.astype(bool)
    return cv2.erode(mask.astype(np.uint8), np.ones((kernel, kernel), np.uint8), iterations=1) > 0


def face_oval_mask(landmarks: Any, height: int, width: int) -> np.ndarray:
    """[H,W] bool: the filled MediaPipe face-oval polygon of ``landmarks`` (a ``FaceLandmarks2D``).

    Its normalised positions are used, so the landmarks may come from any size of the same portrait.
    """
    import cv2

    loop = face_oval_polygon(landmarks.connections)
    norm = landmarks.normalized[:, :2].numpy()
    poly = np.round(norm[loop] * np.array([width, height]) - 0.5).astype(np.int32)
    m = np.zeros((height, width), np.uint8)
    cv2.fillPoly(m, [poly], 1)
    return m > 0


@dataclass
class PortraitHeadMask:
    """mask: [H,W,1] float 0/1 head mask. source: what produced it, in words (shown to the user).
    segmented_face: fraction of the face oval the segmenter alone covered (None without landmarks)."""

    mask: torch.Tensor
    source: str
    segmented_face: float | None = None


def to_rgb_uint8(image: Any) -> np.ndarray:
    """[H,W,3] uint8 from an IMAGE tensor/array ([B,H,W,C] or [H,W,C], 0..1 floats or uint8)."""
    t = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if t.ndim == 4:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"portrait: expected an image [H,W,C] or [B,H,W,C], got shape {t.shape}")
    if t.shape[-1] == 1:
        t = np.repeat(t, 3, -1)
    t = t[..., :3]
    if t.dtype != np.uint8:
        t = (np.clip(np.nan_to_num(t.astype(np.float32)), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(t)


def head_mask_from_portrait(portrait: Any, landmarks: Any | None = None, segmenter: PortraitSegmenter | None = None,
                            threshold: float = SEGMENTATION_THRESHOLD) -> PortraitHeadMask:
    """The head mask of the aligned portrait: segmentation ∪ face oval, eroded like the authors' parsing > 0.

    portrait: the aligned portrait (IMAGE). landmarks: its ``FaceLandmarks2D`` (optional; adds the face
    oval). segmenter: a :class:`PortraitSegmenter`, default MediaPipe's (raises :class:`SegmenterUnavailable`
    when it cannot run). Raises ValueError when the segmenter finds no person and no landmarks are given.
    """
    rgb = to_rgb_uint8(portrait)
    h, w = rgb.shape[:2]
    seg = segmenter if segmenter is not None else load_portrait_segmenter()
    prob = np.asarray(seg(rgb), dtype=np.float32)
    if prob.shape != (h, w):
        raise RuntimeError(f"{seg.name} returned a mask of shape {prob.shape}, expected {(h, w)}")
    person = prob > threshold
    parts = [seg.name]
    covered = None
    if landmarks is not None:
        oval = face_oval_mask(landmarks, h, w)
        covered = float((person & oval).sum() / max(int(oval.sum()), 1))
        person |= oval
        parts.append("face oval")
    if person.sum() < 16:
        raise ValueError(f"{seg.name} found no person in the portrait ({w}x{h}) and no face landmarks were given")
    k = erosion_kernel(h, w)
    mask = erode(person, k)
    source = "portrait: " + " ∪ ".join(parts) + f", eroded {k}x{k}"
    if covered is not None:
        source += f" (segmentation alone covered {100 * covered:.0f}% of the face oval)"
    return PortraitHeadMask(torch.from_numpy(mask.astype(np.float32))[..., None], source, covered)
