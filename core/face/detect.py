"""Face detection and the ArcFace identity embedding (the "ID Embed" stage), through insightface.

ID-Sculpt conditions every diffusion call on the identity of the portrait: insightface ``buffalo_l``
(SCRFD detector + ArcFace R50) gives the ``normed_embedding`` of the largest face, which the
IP-Adapter FaceID projection turns into ID tokens (``core.face.id_adapter``).

Why a wrapper and not a bare ``FaceAnalysis.get``:
  * a single detector input size misses faces that are very large or very small in the frame, so
    detection is retried over several sizes (IPAdapter_plus does the same, from 640 down);
  * ComfyUI images arrive as float RGB tensors, possibly grayscale, RGBA, tiny or huge, while
    insightface wants a BGR uint8 array;
  * several faces, or none, must produce a message that tells the user what to change.

Works with insightface 0.7.x (what ComfyUI users have) and 2.x: only ``FaceAnalysis(name, root,
providers, allowed_modules)``, ``prepare(ctx_id, det_size)`` and ``get(bgr)`` are used. Any object
with those two methods is accepted, e.g. the ``INSIGHTFACE`` object of ComfyUI_IPAdapter_plus.
"""
from __future__ import annotations

import glob
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..dependencies import import_optional
from ..models import missing_model_message

log = logging.getLogger("IDSculpt")

# Detector input sizes tried in order until a face is found. 640 is insightface's default and best
# for small faces; the smaller sizes catch faces that fill the frame (their boxes exceed the
# largest anchors at 640). ID-Sculpt's own preprocessing uses 224.
DEFAULT_DET_SIZES: tuple[int, ...] = (640, 512, 384, 320, 256, 224, 160)
# A face needs enough pixels for a meaningful 112-px ArcFace crop; below this the detector and the
# recogniser only see blur, so we refuse with a message instead of returning a junk identity.
MIN_IMAGE_SIDE = 128
# Larger images are downscaled (area filter) before detection: the detector works at <= 640 px
# anyway, and a 112-px ArcFace crop never needs more than this.
MAX_IMAGE_SIDE = 2048
INSIGHTFACE_MODEL_NAMES = ("buffalo_l", "antelopev2")


# ---------------------------------------------------------------------------------------------
# image conversion shared by the face modules
# ---------------------------------------------------------------------------------------------
def to_rgb_uint8(image: Any, what: str = "portrait", min_side: int = MIN_IMAGE_SIDE) -> tuple[np.ndarray, list[str]]:
    """Any ComfyUI/numpy image -> contiguous RGB uint8 [H,W,3] plus notes on what was changed.

    Accepts [H,W], [H,W,C] or [B,H,W,C] (first image used), float 0..1 or uint8, C in 1..4.
    Grayscale is replicated to 3 channels; an alpha channel is composited onto white (a cut-out
    portrait on transparent background then looks like a studio photo, which detectors like).
    """
    notes: list[str] = []
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu().numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] > 1:
            notes.append(f"{what}: batch of {arr.shape[0]} images, using the first")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{what}: expected an image [H,W,C] with 1-4 channels (ComfyUI IMAGE), got shape {tuple(np.shape(image))}"
        )
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    else:
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: the image contains NaN or infinite values; check the node that produced it")
        if arr.max(initial=0.0) > 1.5:  # 0..255 floats
            arr = arr / 255.0
        arr = np.clip(arr, 0.0, 1.0)
    c = arr.shape[-1]
    if c in (2, 4):
        alpha = arr[..., -1:]
        color = arr[..., :-1]
        if float(alpha.min()) < 1.0:
            notes.append(f"{what}: alpha channel composited onto white")
        arr = color * alpha + (1.0 - alpha)
        c -= 1
    if c == 1:
        notes.append(f"{what}: grayscale image, replicated to RGB")
        arr = np.repeat(arr, 3, axis=-1)
    h, w = arr.shape[:2]
    check_image_size(h, w, what, min_side)
    return np.ascontiguousarray((arr * 255.0 + 0.5).astype(np.uint8)), notes


def check_image_size(height: int, width: int, what: str = "portrait", min_side: int = MIN_IMAGE_SIDE) -> None:
    """Refuse an image too small for face detection, with the one message every face node gives.

    The one home of the size check: ID Embed (insightface), the MediaPipe landmarks and PanoHead
    Invert's alignment all call it, so a 64-px portrait is refused by whichever node sees it first,
    with the same words (not upsampled into a blurry crop that fails later with a misleading message).
    """
    if min(height, width) < min_side:
        raise ValueError(
            f"{what} is too small: {width}x{height} px; face detection needs at least {min_side} px on the shorter side "
            f"(and the face should be >= ~64 px across). Use a larger photo or upscale it first "
            f"(e.g. an 'Upscale Image' node)."
        )


def box_area(box: Sequence[float]) -> float:
    """Area of an (x1, y1, x2, y2) box in pixels (0 for an inverted box)."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    return float(max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]))


def largest_first(boxes: Sequence[Sequence[float]]) -> list[int]:
    """Indices of ``boxes`` (x1, y1, x2, y2) by box area, largest first (ties keep detector order).

    The one face ordering of the pack: ID Embed's ``face_index`` counts insightface's boxes this way and
    PanoHead Invert's / Landmark Render's count MediaPipe's landmark boxes this way, so index 0 is the
    largest face for every node.
    """
    areas = [box_area(b) for b in boxes]
    return sorted(range(len(areas)), key=lambda i: -areas[i])


def limit_size(rgb: np.ndarray, max_side: int = MAX_IMAGE_SIDE) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is <= max_side; returns (image, scale applied)."""
    import cv2

    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    if s >= 1.0:
        return rgb, 1.0
    out = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return out, s


# ---------------------------------------------------------------------------------------------
# model loading
# ---------------------------------------------------------------------------------------------
def insightface_model_dir(root: str, name: str) -> str:
    """``<root>/models/<name>`` holding the ONNX files, or a FileNotFoundError saying what to do.

    ``root`` is ComfyUI's ``models/insightface`` folder (the layout insightface and IPAdapter_plus use).
    """
    model_dir = os.path.join(root, "models", name)
    if glob.glob(os.path.join(model_dir, "*.onnx")):
        return model_dir
    nested = os.path.join(model_dir, name)
    if glob.glob(os.path.join(nested, "*.onnx")):
        raise FileNotFoundError(
            f"insightface '{name}': the ONNX files are in {nested}, one folder too deep (the zip was "
            f"unpacked into a folder of its own name). Move them up into {model_dir}."
        )
    # The message is the model table's (core/models.py), so every loader points at the same place.
    raise FileNotFoundError(
        f"insightface model '{name}' not found: no .onnx files in {model_dir}. "
        + missing_model_message(f"models/{name}", "insightface", [root], key="insightface_det")
        + f" Unpack {name}.zip so that {model_dir}/ holds the .onnx files (det_10g.onnx, w600k_r50.onnx, ... for "
        "buffalo_l). Nothing is downloaded automatically."
    )


def onnx_providers(provider: str) -> list[str]:
    """onnxruntime providers for "CPU" / "CUDA" (CUDA falls back to CPU when it is not available)."""
    import onnxruntime

    provider = provider.upper()
    if provider == "CPU":
        return ["CPUExecutionProvider"]
    want = f"{provider}ExecutionProvider"
    if want not in onnxruntime.get_available_providers():
        log.warning("IDSculpt: onnxruntime has no %s here (available: %s); insightface runs on CPU",
                    want, onnxruntime.get_available_providers())
        return ["CPUExecutionProvider"]
    return [want, "CPUExecutionProvider"]


def load_face_analysis(root: str, name: str = "buffalo_l", provider: str = "CPU") -> Any:
    """An insightface ``FaceAnalysis`` with detection + recognition from ``<root>/models/<name>``.

    Only those two tasks are loaded: the 3D/2D landmark and gender-age models of the pack are not
    needed for the identity and would triple the load time.
    """
    model_dir = insightface_model_dir(root, name)
    # names the module really missing: "insightface 2.1 is installed but ... the module 'onnx' is missing"
    FaceAnalysis = import_optional("insightface", "app", purpose="face detection and the ArcFace identity").app.FaceAnalysis
    try:
        app = FaceAnalysis(name=name, root=root, providers=onnx_providers(provider),
                           allowed_modules=["detection", "recognition"])
    except AssertionError as e:
        raise RuntimeError(f"insightface found no face detector among the ONNX files in {model_dir}") from e
    if "recognition" not in app.models:
        raise RuntimeError(
            f"insightface '{name}' in {model_dir} has no recognition model (ArcFace, e.g. w600k_r50.onnx or "
            f"glintr100.onnx): the identity embedding needs it"
        )
    app.prepare(ctx_id=0, det_size=(DEFAULT_DET_SIZES[0],) * 2)
    return app


# ---------------------------------------------------------------------------------------------
# the face-ID value
# ---------------------------------------------------------------------------------------------
@dataclass
class FaceID:
    """The identity of the portrait's face, as ID-Sculpt uses it.

    embedding: [512] L2-normalised ArcFace embedding (insightface ``normed_embedding``), float32.
    box: [4] x1, y1, x2, y2 in pixels of the input image; keypoints: [5,2] (eyes, nose tip, mouth
    corners, image-left first), same pixels. aligned_crop: [112,112,3] RGB 0..1, the ArcFace
    input (the similarity-aligned face). index: position among the detected faces sorted by box
    area, largest first; num_faces: how many were found. log: what was done, for the user.
    """

    embedding: torch.Tensor
    box: torch.Tensor
    keypoints: torch.Tensor
    aligned_crop: torch.Tensor
    det_score: float
    index: int = 0
    num_faces: int = 1
    det_size: int = 640
    image_size: tuple[int, int] = (0, 0)
    log: str = ""
    notes: list[str] = field(default_factory=list)
    # Several photos of one person (ID Embed with an IMAGE batch). The fields above describe the
    # REFERENCE photo (the one alignment, projection and LPIPS use); these describe all kept photos.
    #: [N,512] normed ArcFace embeddings of the kept photos (reference first); None = this one photo.
    embeddings: torch.Tensor | None = None
    #: batch positions of the kept photos, same order as ``embeddings`` (reference first).
    photo_indices: list[int] = field(default_factory=list)
    #: batch position of the reference photo (PanoHead Invert picks this image from a batch).
    reference_index: int = 0
    #: batch size ID Embed was given, and the positions dropped as another person.
    num_photos: int = 1
    dropped: list[int] = field(default_factory=list)
    #: [N,112,112,3] ArcFace crops of the kept photos (same order as ``embeddings``).
    photo_crops: torch.Tensor | None = None

    def cosine(self, other: "FaceID") -> float:
        return float(torch.dot(self.embedding, other.embedding))

    def all_embeddings(self) -> torch.Tensor:
        """[N,512] embeddings of every kept photo (reference first); [1,512] for a single photo."""
        if self.embeddings is not None:
            return self.embeddings
        return self.embedding.reshape(1, -1)


def _face_area(face: Any) -> float:
    return box_area(np.asarray(face.bbox, dtype=np.float64)[:4])


def detect_faces(app: Any, bgr: np.ndarray, det_sizes: Sequence[int] = DEFAULT_DET_SIZES) -> tuple[list[Any], int, list[int]]:
    """Run ``app.get`` at each detector size until a face is found.

    Returns (faces sorted by box area, largest first; the size that found them; the sizes tried).
    """
    tried: list[int] = []
    found: list[Any] = []
    size = -1
    with warnings.catch_warnings():  # scikit-image deprecation inside insightface's norm_crop
        warnings.simplefilter("ignore", FutureWarning)
        for s in det_sizes:
            s = int(s)
            tried.append(s)
            app.prepare(ctx_id=0, det_size=(s, s))
            found = list(app.get(bgr))
            if found:
                size = s
                break
    if tried and tried[-1] != DEFAULT_DET_SIZES[0]:
        # leave a shared FaceAnalysis (e.g. IPAdapter_plus's) at insightface's default size
        app.prepare(ctx_id=0, det_size=(DEFAULT_DET_SIZES[0],) * 2)
    found = [found[i] for i in largest_first([np.asarray(f.bbox, dtype=np.float64)[:4] for f in found])]
    return found, size, tried


def face_id_from_image(
    app: Any,
    image: Any,
    face_index: int = 0,
    det_sizes: Sequence[int] = DEFAULT_DET_SIZES,
) -> FaceID:
    """Detect the face(s) of a portrait and return the ArcFace identity of one (largest by default).

    ``app``: a loaded insightface ``FaceAnalysis`` (ours or IPAdapter_plus's INSIGHTFACE object).
    ``face_index``: which face when there are several, counted by box area, largest first.
    """
    import cv2

    face_align = import_optional("insightface", "utils.face_align", purpose="the ArcFace face crop").utils.face_align

    rgb, notes = to_rgb_uint8(image)
    h0, w0 = rgb.shape[:2]
    rgb, scale = limit_size(rgb)
    if scale < 1.0:
        notes.append(f"portrait: {w0}x{h0} px downscaled to {rgb.shape[1]}x{rgb.shape[0]} for detection")
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    faces, det_size, tried = detect_faces(app, bgr, det_sizes)
    if not faces:
        raise RuntimeError(
            f"No face found in the portrait ({w0}x{h0} px; detector sizes tried: {tried}). Use a photo with one "
            f"clearly visible, roughly frontal face, not too dark or blurred, at least ~64 px across; crop "
            f"closer to the face if it is tiny in the frame."
        )
    n = len(faces)
    if not 0 <= face_index < n:
        raise ValueError(f"face_index {face_index} is out of range: {n} face(s) found (indices 0..{n - 1}, largest first)")
    face = faces[face_index]
    emb = getattr(face, "normed_embedding", None) if getattr(face, "embedding", None) is not None else None
    if emb is None:
        raise RuntimeError("insightface returned no embedding: the loaded model pack has no recognition (ArcFace) model")
    emb_t = torch.as_tensor(np.asarray(emb, dtype=np.float32)).reshape(-1)
    if not torch.isfinite(emb_t).all() or float(emb_t.norm()) < 1e-6:
        raise RuntimeError("insightface returned an invalid (NaN or zero) embedding for this face")
    emb_t = torch.nn.functional.normalize(emb_t, dim=0)
    kps = np.asarray(face.kps, dtype=np.float32).reshape(5, 2)
    with warnings.catch_warnings():  # scikit-image deprecation inside insightface's norm_crop
        warnings.simplefilter("ignore", FutureWarning)
        crop_bgr = face_align.norm_crop(bgr, landmark=kps, image_size=112)
    crop = torch.from_numpy(np.ascontiguousarray(crop_bgr[..., ::-1]).astype(np.float32) / 255.0)
    inv = 1.0 / scale
    box = torch.as_tensor(np.asarray(face.bbox, dtype=np.float32)[:4] * inv)
    kps_t = torch.as_tensor(kps * inv)
    lines = [f"face found at detector size {det_size}" + (f" (after trying {tried[:-1]})" if len(tried) > 1 else "")]
    if n > 1:
        sizes = ", ".join(f"#{i}: {int(_face_area(f) * inv * inv) ** 0.5:.0f} px" for i, f in enumerate(faces))
        lines.append(
            f"{n} faces found ({sizes}; sqrt of box area, largest first); using face #{face_index}"
            + (" (the largest)" if face_index == 0 else "")
            + ". Set face_index to use another, or crop the portrait to one person."
        )
    lines.append(f"det score {float(face.det_score):.3f}, box {[round(float(v)) for v in box]}")
    msg = "; ".join(notes + lines)
    if n > 1:
        log.warning("IDSculpt ID Embed: %s", msg)
    return FaceID(
        embedding=emb_t,
        box=box,
        keypoints=kps_t,
        aligned_crop=crop,
        det_score=float(face.det_score),
        index=face_index,
        num_faces=n,
        det_size=det_size,
        image_size=(h0, w0),
        log=msg,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# several photos of one person
# ---------------------------------------------------------------------------------------------
#: Mean ArcFace cosine to the other photos below which a photo is taken for another person. Not
#: from the paper (one photo there): with insightface's normed embeddings two photos of one person
#: typically score 0.4-0.8 and two different people -0.1-0.2; insightface practice draws the
#: same-person line near 0.28-0.3, so 0.3 drops strangers and keeps hard (profile, old) photos.
SAME_PERSON_THRESHOLD = 0.3


@dataclass
class SamePersonCheck:
    """Which photos are one person: ``keep`` / ``dropped`` (positions), each photo's mean cosine to
    the others (``mean_cosine``, None for a single photo) and a message for the user."""

    keep: list[int]
    dropped: list[int]
    mean_cosine: list[float | None]
    message: str


def same_person_check(embeddings: torch.Tensor, threshold: float = SAME_PERSON_THRESHOLD,
                      reference: int = 0) -> SamePersonCheck:
    """Drop, one at a time, the photo whose mean cosine to the other remaining photos is lowest,
    while that mean is below ``threshold``.

    ``embeddings``: [N,512] (normalised here). One at a time, because a stranger drags down every
    other photo's mean too: with three photos (two of the subject agreeing at 0.5, a stranger at 0)
    the subject's means are 0.25 while the stranger is present and 0.5 once he is gone. The
    reference photo defines the identity the head is built from, so it is never dropped: when it is
    the outlier of three or more photos, that is an error (the user marked a stranger as reference);
    of two disagreeing photos the other one is dropped.
    """
    e = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32).reshape(len(embeddings), -1), dim=1)
    n = e.shape[0]
    if not 0 <= reference < n:
        raise ValueError(f"reference_index {reference} is out of range: {n} photo(s) (indices 0..{n - 1})")
    if n == 1:
        return SamePersonCheck([0], [], [None], "one photo")
    sim = e @ e.T

    def means(alive: list[int]) -> dict[int, float]:
        sub = sim[alive][:, alive]
        m = (sub.sum(1) - sub.diagonal()) / (len(alive) - 1)
        return {i: float(v) for i, v in zip(alive, m)}

    first = means(list(range(n)))
    scores = ", ".join(f"#{i}: {first[i]:.2f}" for i in range(n))
    alive, dropped = list(range(n)), []
    while len(alive) >= 2:
        m = means(alive)
        worst = min((i for i in alive if i != reference), key=lambda i: m[i])
        if len(alive) >= 3 and m[reference] < threshold and m[reference] < m[worst]:
            others = [i for i in alive if i != reference]
            raise ValueError(
                f"the reference photo #{reference} does not look like the same person as photo(s) {others} (mean ArcFace "
                f"cosine to the others: {', '.join(f'#{i}: {m[i]:.2f}' for i in alive)}; threshold {threshold}). Set "
                f"reference_index to a photo of the person to build, or remove the stranger's photo from the batch.")
        if m[worst] >= threshold:
            break
        alive.remove(worst)
        dropped.append(worst)
    keep = [reference] + [i for i in alive if i != reference]
    msg = f"{n} photos, mean ArcFace cosine to the others {scores} (same person when >= {threshold})"
    if dropped:
        msg += f"; dropped photo(s) {sorted(dropped)} as another person than the reference #{reference}"
    msg += f"; identity from photo(s) {sorted(keep)}"
    return SamePersonCheck(keep, sorted(dropped), [first[i] for i in range(n)], msg)


def photo_list(images: Any) -> list[Any]:
    """The photos of an ID Embed input: each image of a [B,H,W,C] batch, or the items of a list/tuple
    (photos of different sizes, which an IMAGE batch cannot hold)."""
    if isinstance(images, (list, tuple)):
        out: list[Any] = []
        for im in images:
            out += photo_list(im)
        return out
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return [images[i] for i in range(images.shape[0])]
    arr = images if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 4:
        return [arr[i] for i in range(arr.shape[0])]
    return [images]


def face_id_from_photos(
    app: Any,
    images: Any,
    face_index: int = 0,
    reference_index: int = 0,
    same_person_threshold: float = SAME_PERSON_THRESHOLD,
    det_sizes: Sequence[int] = DEFAULT_DET_SIZES,
) -> FaceID:
    """The identity of one person from one or several photos of them.

    Each photo is detected as ``face_id_from_image`` does (``face_index`` per photo, largest first);
    photos that are another person (``same_person_check``) are dropped with a message. The result
    describes the reference photo (box, crop, size: what alignment uses) and carries every kept
    photo's embedding in ``embeddings`` (reference first) for the ID adapter and the evaluation.
    """
    photos = photo_list(images)
    n = len(photos)
    if n == 0:
        raise ValueError("ID Embed got an empty image batch")
    if not 0 <= reference_index < n:
        raise ValueError(f"reference_index {reference_index} is out of range: {n} photo(s) in the batch (indices 0..{n - 1})")
    faces: list[FaceID] = []
    for i, photo in enumerate(photos):
        try:
            faces.append(face_id_from_image(app, photo, face_index=face_index, det_sizes=det_sizes))
        except (RuntimeError, ValueError) as e:
            if n == 1:
                raise
            raise type(e)(f"photo #{i} of {n}: {e}") from e
    if n == 1:
        return faces[0]
    check = same_person_check(torch.stack([f.embedding for f in faces]), same_person_threshold, reference_index)
    if check.dropped:
        log.warning("IDSculpt ID Embed: %s", check.message)
    ref = faces[reference_index]
    lines = [check.message, f"reference photo #{reference_index}: {ref.log}"]
    ref.embeddings = torch.stack([faces[i].embedding for i in check.keep])
    ref.photo_crops = torch.stack([faces[i].aligned_crop for i in check.keep])
    ref.photo_indices = list(check.keep)
    ref.reference_index = reference_index
    ref.num_photos = n
    ref.dropped = list(check.dropped)
    ref.log = "; ".join(lines)
    return ref
