"""Portrait alignment into PanoHead's frame: the crop and the 25-float camera label.

PanoHead's own preprocessing (``3DDFA_V2_cropping/recrop_images.py``) does, per portrait:
  1. an FFHQ-style quad from dlib-68 eyes/mouth (``get_crop_bound(method="ffhq")``): centre at the
     eye midpoint + 0.1·eye→mouth, half-size max(2·|eye→eye|, 1.8·|eye→mouth|), axes along the eyes;
  2. a 512² crop of that quad, on which 3DDFA-V2 fits a 3D face: rotation R, scale s, and the
     projected head centre t (the BFM origin pushed back by half the mean face depth);
  3. the quad is re-centred on t and rescaled by s (the "recrop"), and the camera label is R seen
     from distance 2.7 with focal 4.2647 (``eg3dcamparams``);
  4. ``crop_final``: the quad maps to a 512² square inside a 563² image (5% margin left/right, 10%
     top), reflected borders blended with a blur, and the 563² image is resized to 512² for the GAN.

Here MediaPipe's 478 points with depth replace dlib + 3DDFA. They come from the pack's one landmark
detector (``core.face.landmarks.detect_landmarks``: the legacy FaceMesh of mediapipe 0.10.21, else the
Tasks API with a ``face_landmarker.task`` file), and the face is chosen as ID Embed chooses it (largest
first, or the face overlapping ID Embed's box):
  * step 1 uses the MediaPipe points that correspond to dlib's eye contours and mouth corners;
  * step 2's pose comes from a face frame built from symmetric landmark pairs (x, subject's left),
    the chin→forehead line (y, up) and their cross product (z, front), corrected by a fixed pitch
    offset; the head centre is a fixed point of that frame and the scale the RMS landmark spread.
    The three constants (pitch offset, centre offset, reference spread) were calibrated on
    PanoHead's own aligned samples (``3DDFA_V2_cropping/crop_samples`` and ``dataset/testdata_img``,
    4 crops with their labels) by :func:`calibrate`; see docs/PANOHEAD.md for the residuals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..camera import EG3D_FOCAL, EG3D_RADIUS, Cameras
from ..face.detect import check_image_size
from ..face.landmarks import FaceLandmarks2D, detect_landmarks

# MediaPipe indices standing in for dlib-68 points used by PanoHead
MP_EYE_IMG_LEFT = (33, 160, 158, 133, 153, 144)  # dlib 36-41 (subject's right eye, image left)
MP_EYE_IMG_RIGHT = (362, 385, 387, 263, 373, 380)  # dlib 42-47
MP_MOUTH_CORNERS = (61, 291)  # dlib 48, 54
MP_CHIN, MP_FOREHEAD = 152, 10
# symmetric pairs (image-left point, image-right point) for the face's x axis
MP_SYMMETRIC_PAIRS = ((33, 263), (133, 362), (61, 291), (234, 454), (127, 356), (70, 300), (58, 288), (172, 397), (98, 327))

# calibrated on PanoHead's aligned samples (see module docstring / calibrate())
# (fit residuals on those 4 crops: yaw within 2.8°, pitch within 1.9°, head centre within 6 px of 563,
#  spread std 0.5%)
PITCH_OFFSET_DEG = -1.074
CENTER_OFFSET = (-0.4957, -1.0971)  # head centre = eye midpoint + D·(a·y_axis + b·z_axis), D = RMS spread
REFERENCE_SPREAD = 0.22227  # RMS landmark spread in units of the 512-px quad side
CROP_SIZE = 512
# MediaPipe's face-detection threshold for the alignment (lower than Landmark Render's 0.5: a portrait
# is known to hold a face, so a hesitant detection is still the face wanted)
ALIGN_MIN_CONFIDENCE = 0.3


@dataclass
class AlignedPortrait:
    image: np.ndarray  # [512,512,3] uint8 RGB, PanoHead's crop
    label: torch.Tensor  # [1,25] EG3D camera label
    quad: np.ndarray  # [4,2] final quad in the source image (c-x-y, c-x+y, c+x+y, c+x-y)
    crop_matrix: np.ndarray  # [2,3] source pixel -> output pixel affine
    landmarks: np.ndarray  # [478,3] landmarks in output pixels (z scaled like x)
    yaw_pitch_roll: tuple[float, float, float]  # degrees, for reports
    face_index: int = 0  # which face of the portrait (largest first)
    num_faces: int = 1  # how many MediaPipe found
    log: str = ""  # the detector's report (faces found, which one is used), for the node's info

    @property
    def cameras(self) -> Cameras:
        return Cameras.from_eg3d_label(self.label, self.image.shape[0])


def portrait_landmarks(image: np.ndarray, face_index: int = 0, model_path: Optional[str] = None,
                       face_box: Optional[Sequence[float]] = None) -> FaceLandmarks2D:
    """The chosen face's 478 MediaPipe points, from the pack's one detector (``core.face.landmarks``:
    legacy FaceMesh, else the Tasks API with ``model_path``); faces counted largest first, like ID Embed."""
    return detect_landmarks(image, face_index=face_index, model_path=model_path, face_box=face_box,
                            min_confidence=ALIGN_MIN_CONFIDENCE, purpose="PanoHead alignment")


def ffhq_quad(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PanoHead's ``get_crop_bound(method='ffhq')`` on MediaPipe points: (quad, c, x, y)."""
    left_e = lm[list(MP_EYE_IMG_LEFT), :2].mean(0)
    right_e = lm[list(MP_EYE_IMG_RIGHT), :2].mean(0)
    left_m, right_m = lm[MP_MOUTH_CORNERS[0], :2], lm[MP_MOUTH_CORNERS[1], :2]
    eye_to_eye = right_e - left_e
    eye_avg = (left_e + right_e) * 0.5
    eye_to_mouth = (left_m + right_m) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1, 1])
    x = x / np.hypot(*x)
    x = x * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * np.array([-1, 1])
    c = eye_avg + eye_to_mouth * 0.1
    return _quad(c, x, y), c, x, y


def _quad(c, x, y) -> np.ndarray:
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]).astype(np.float64)


def _affine(src3: np.ndarray, dst3: np.ndarray) -> np.ndarray:
    """2x3 affine mapping three points exactly (cv2.getAffineTransform without the float32 cast)."""
    a = np.concatenate([src3, np.ones((3, 1))], 1)
    return np.linalg.solve(a, dst3).T


def _apply(mat: np.ndarray, lm: np.ndarray) -> np.ndarray:
    out = lm.copy()
    out[:, :2] = lm[:, :2] @ mat[:, :2].T + mat[:, 2]
    out[:, 2] = lm[:, 2] * math.sqrt(abs(np.linalg.det(mat[:, :2])))
    return out


def face_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Face rotation (columns x, y, z of the face in view axes: x right, y up, z toward the viewer),
    eye midpoint (view coords) and RMS spread of the landmarks, from pixel landmarks [478,3]."""
    v = np.stack([lm[:, 0], -lm[:, 1], -lm[:, 2]], 1)  # image y down, MediaPipe z away -> view axes
    xa = np.mean([v[b] - v[a] for a, b in MP_SYMMETRIC_PAIRS], axis=0)
    xa /= np.linalg.norm(xa)
    up = v[MP_FOREHEAD] - v[MP_CHIN]
    ya = up - xa * (up @ xa)
    ya /= np.linalg.norm(ya)
    za = np.cross(xa, ya)
    eyes = 0.5 * (v[list(MP_EYE_IMG_LEFT)].mean(0) + v[list(MP_EYE_IMG_RIGHT)].mean(0))
    spread = float(np.sqrt(((v - v.mean(0)) ** 2).sum(1).mean()))
    return np.stack([xa, ya, za], 1), eyes, spread


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def head_pose(lm: np.ndarray, pitch_offset: float = PITCH_OFFSET_DEG, center_offset: Sequence[float] = CENTER_OFFSET
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """(R world->view, projected head centre in pixels [2], spread) for pixel landmarks."""
    rf, eyes, spread = face_frame(lm)
    r = rf @ _rot_x(pitch_offset)
    center = eyes + spread * (center_offset[0] * rf[:, 1] + center_offset[1] * rf[:, 2])
    return r, np.array([center[0], -center[1]]), spread


def label_from_rotation(r: np.ndarray) -> torch.Tensor:
    """PanoHead's ``eg3dcamparams``: world->view rotation R (view: x right, y up, z to viewer) seen
    from distance 2.7 -> EG3D label [1,25] (OpenCV cam2world + normalised intrinsics)."""
    p = np.eye(4)
    p[:3, :3] = r
    p[2, 3] = -EG3D_RADIUS
    world2cam = np.diag([1.0, -1.0, -1.0, 1.0]) @ p
    cam2world = np.linalg.inv(world2cam)
    k = np.array([[EG3D_FOCAL, 0, 0.5], [0, EG3D_FOCAL, 0.5], [0, 0, 1]])
    return torch.tensor(np.concatenate([cam2world.reshape(16), k.reshape(9)]), dtype=torch.float32)[None]


def rotation_from_label(label: torch.Tensor | np.ndarray) -> np.ndarray:
    c2w = np.asarray(label, dtype=np.float64).reshape(-1)[:16].reshape(4, 4)
    w2c = np.linalg.inv(c2w)
    return (np.diag([1.0, -1.0, -1.0, 1.0]) @ w2c)[:3, :3]


def yaw_pitch_roll(r: np.ndarray) -> tuple[float, float, float]:
    """Angles (deg) of the head in view: yaw + = face turned to the viewer's right."""
    f = r[:, 2]  # face normal in view coords
    yaw = math.degrees(math.atan2(f[0], f[2]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, f[1]))))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def _final_matrix(quad: np.ndarray, out_size: int) -> np.ndarray:
    """``crop_final`` geometry (quad -> 512² inside 563², then resized to out_size)."""
    size = 512
    crop_w = int(size * 1.1)
    top, left = int(size * 0.1), int(size * 0.05)
    s1 = size - 1
    bound = np.array([[left, top], [left, top + s1], [left + s1, top + s1]], dtype=np.float64)
    mat = _affine(quad[:3], bound)
    return mat * (out_size / crop_w)


def warp_crop(image: np.ndarray, mat: np.ndarray, out_size: int) -> np.ndarray:
    """Lanczos warp with reflected borders blended into a blur, as PanoHead's ``crop_final``."""
    import cv2

    img = np.ascontiguousarray(image[..., :3])
    crop = cv2.warpAffine(img, mat, (out_size, out_size), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT)
    valid = cv2.warpAffine(np.full(img.shape[:2], 255, np.uint8), mat, (out_size, out_size))
    if valid.mean() < 255:
        mk = int(out_size * 0.02) * 2 + 1
        bk = int(out_size * 0.03) * 2 + 1
        m = cv2.blur(valid.astype(np.float32), (mk, mk))[..., None] / 255.0
        blurred = cv2.blur(crop, (bk, bk))
        crop = (crop * m + blurred * (1 - m)).clip(0, 255).astype(np.uint8)
    return crop


def align_portrait(image: np.ndarray, landmarks: Optional[np.ndarray] = None, out_size: int = CROP_SIZE,
                   pitch_offset: float = PITCH_OFFSET_DEG, center_offset: Sequence[float] = CENTER_OFFSET,
                   reference_spread: float = REFERENCE_SPREAD, face_index: int = 0, model_path: Optional[str] = None,
                   face_box: Optional[Sequence[float]] = None) -> AlignedPortrait:
    """Crop ``image`` (RGB uint8 [H,W,3]) the way PanoHead's preprocessing does and return its label.

    The face: ``landmarks`` when given, else MediaPipe's ``face_index``-th largest face, or the one whose
    box overlaps ``face_box`` (ID Embed's face) most; ``model_path`` is the Tasks API's face_landmarker.task
    for a mediapipe without the legacy FaceMesh. A portrait below 128 px is refused (ID Embed's message).
    """
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"portrait must be an RGB image [H,W,3], got shape {image.shape}")
    check_image_size(image.shape[0], image.shape[1])
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    found: Optional[FaceLandmarks2D] = None
    if landmarks is None:
        found = portrait_landmarks(image, face_index, model_path, face_box)
        lm = found.points.double().numpy()
    else:
        lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (478, 3) and lm.shape != (468, 3):
        raise ValueError(f"landmarks must be MediaPipe FaceMesh points [478,3] in pixels, got {lm.shape}")
    _, c, x, y = ffhq_quad(lm)
    # step 2: pose in the 512² crop of the FFHQ quad
    s1 = CROP_SIZE - 1
    mat0 = _affine(_quad(c, x, y)[:3], np.array([[0, 0], [0, s1], [s1, s1]], dtype=np.float64))
    lm0 = _apply(mat0, lm)
    r, center, spread = head_pose(lm0, pitch_offset, center_offset)
    # step 3: recrop on the head centre, rescale so the face spread matches the reference
    half = 0.5 * s1
    c = c + x * (center[0] - half) / half + y * (center[1] - half) / half
    s = (spread / CROP_SIZE) / reference_spread
    x, y = x * s, y * s
    quad = _quad(c, x, y)
    mat = _final_matrix(quad, out_size)
    crop = warp_crop(image, mat, out_size)
    extra = {} if found is None else {"face_index": found.index, "num_faces": found.num_faces, "log": found.log}
    return AlignedPortrait(crop, label_from_rotation(r), quad, mat, _apply(mat, lm), yaw_pitch_roll(r), **extra)


def calibrate(crops: Sequence[np.ndarray], labels: Sequence[np.ndarray], landmarks: Optional[Sequence[np.ndarray]] = None
              ) -> dict[str, float]:
    """Fit (pitch offset, centre offset, reference spread) so PanoHead's own aligned 563² crops map
    to themselves: in those crops the head centre sits at (25 + 255.5, 51 + 255.5) px and the quad
    side is 511 px; their labels give the true rotation."""
    rows_a, rhs, spreads, pitches = [], [], [], []
    for k, (img, lab) in enumerate(zip(crops, labels)):
        lm = portrait_landmarks(img).points.double().numpy() if landmarks is None else landmarks[k]
        rf, eyes, spread = face_frame(lm)
        r_true = rotation_from_label(lab)
        d = rf.T @ r_true  # = rot_x(pitch offset) if the frame is right up to pitch
        pitches.append(math.degrees(math.atan2(d[2, 1], d[1, 1])))
        target = np.array([25 + 255.5, -(51 + 255.5)])  # view coords (y up)
        rows_a.append(np.stack([spread * rf[:2, 1], spread * rf[:2, 2]], 1))
        rhs.append(target - eyes[:2])
        spreads.append(spread / 512.0)
    ab, *_ = np.linalg.lstsq(np.concatenate(rows_a), np.concatenate(rhs), rcond=None)
    return {"pitch_offset": float(np.mean(pitches)), "center_a": float(ab[0]), "center_b": float(ab[1]),
            "reference_spread": float(np.mean(spreads)), "pitch_std": float(np.std(pitches)), "spread_std": float(np.std(spreads))}
