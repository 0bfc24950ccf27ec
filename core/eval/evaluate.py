"""Evaluate a textured head against its input portrait with the paper's metrics (§4.3, Table 1).

* LPIPS(AlexNet, 224 px) between the input and the render at the reference view (fidelity);
* CLIP-I: cosine of CLIP image embeddings between the input and renders of an azimuth sweep;
* ID: cosine between the input's face embedding and the renders' at the paper's four novel views
  (left-frontal, left, right-frontal, right), with insightface ArcFace (the recogniser that guided
  generation) and with dlib's ResNet recogniser (independent of the method: ArcFace alone flatters it);
* per-view face-detection flags and an ID-versus-azimuth curve image.

The paper names its four ID views but not their angles. We take ±30° for left/right-frontal and ±60°
for left/right: at ±90° (full profile) both recognisers' detectors miss most real faces, so the score
would mostly measure the detector. The whole curve (default every 15° round the head) is reported too.
Azimuth sign follows core.camera: + = camera on the subject's left (+x).

A metric whose model is absent is reported as {"skipped": reason}; nothing is estimated in its place.
The portrait must be the image the reference camera looks at (the pipeline's aligned crop), since
LPIPS compares it pixel for pixel with the reference render.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..camera import Cameras, eg3d_frontal_label
from ..mesh import HeadMesh
from ..stage_types import InterruptFn, ProgressFn
from .identity import DLIB_SAME_PERSON_DISTANCE, FaceRecognizer, cosine, to_uint8_rgb
from .lpips import LPIPSAlex, lpips_distance
from .plot import draw_id_curve

ImageEmbedder = Callable[[torch.Tensor], torch.Tensor]  # [B,H,W,3] 0..1 → [B,D]

# The paper's four ID views (names from §4.3; angles are our choice, see the module docstring).
PAPER_ID_VIEWS: tuple[tuple[str, float], ...] = (
    ("left-frontal", 30.0),
    ("left", 60.0),
    ("right-frontal", -30.0),
    ("right", -60.0),
)
DEFAULT_SWEEP = tuple(float(a) for a in range(-180, 180, 15))


@dataclass
class EvalConfig:
    sweep_azimuths: Sequence[float] = DEFAULT_SWEEP
    id_views: Sequence[tuple[str, float]] = PAPER_ID_VIEWS
    sweep_resolution: int = 512
    background: float = 1.0  # sweep renders on white (a neutral backdrop for CLIP and detectors)
    reference_background: str = "input"  # "input": render composited over the portrait; "plain": on `background`
    lpips_resolution: Optional[int] = 224
    render_batch: int = 8
    render_backend: Optional[str] = None

    def validate(self) -> None:
        if not len(self.sweep_azimuths) and not len(self.id_views):
            raise ValueError("Evaluation needs at least one sweep azimuth or ID view")
        if self.sweep_resolution < 32:
            raise ValueError(f"sweep_resolution {self.sweep_resolution} is too small for face detection; use >= 128")
        if self.reference_background not in ("input", "plain"):
            raise ValueError("reference_background must be 'input' or 'plain'")


@dataclass
class EvalResult:
    report: dict[str, Any]
    curve_image: Any  # PIL.Image
    reference_render: torch.Tensor  # [1,H,W,3]
    view_renders: torch.Tensor  # [V,h,w,3], azimuths in report["views"] order
    view_masks: torch.Tensor = field(repr=False, default=None)  # [V,h,w,1]


# ---------------------------------------------------------------------- cameras
def resolve_reference_camera(reference: Any, height: int, width: int) -> Cameras:
    """The reference camera at the portrait's size: a Cameras, an EG3D 25-float label, or None (frontal)."""
    if reference is None:
        cams = Cameras.from_eg3d_label(eg3d_frontal_label())
    elif isinstance(reference, Cameras):
        cams = reference.first()
    else:
        if isinstance(reference, str):
            txt = reference.replace("[", " ").replace("]", " ").replace(",", " ").split()
            try:
                reference = [float(x) for x in txt]
            except ValueError as e:
                raise ValueError(f"reference camera text must be 25 numbers (an EG3D label), got {reference!r}") from e
            if not reference:
                return resolve_reference_camera(None, height, width)
        label = torch.as_tensor(np.asarray(reference, dtype=np.float32)).reshape(-1)
        if label.numel() != 25:
            raise ValueError(f"an EG3D camera label has 25 numbers (cam2world 16 + intrinsics 9), got {label.numel()}")
        cams = Cameras.from_eg3d_label(label[None])
    return cams.with_resolution(height, width)


def orbit_like(reference: Cameras, azimuths: Sequence[float], resolution: int) -> Cameras:
    """Cameras at the reference camera's distance, elevation and FoV, round the head at ``azimuths``.

    The orbit centre is the point of the reference optical axis nearest the origin (the origin itself
    for EG3D's frontal camera), so the sweep frames the head as the reference view does.
    """
    p = reference.position[0].double()
    fwd = reference.cam2world[0, :3, 2].double()
    centre = p + fwd * torch.clamp(-(p @ fwd), min=0.0)
    rel = p - centre
    dist = float(rel.norm())
    if dist < 1e-6:
        raise ValueError("reference camera sits on the head centre; cannot derive an orbit from it")
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, float(rel[1]) / dist))))
    return Cameras.orbit(
        elevation, torch.tensor(list(azimuths), dtype=torch.float32), dist, float(reference.fov[0]), resolution,
        target=tuple(float(x) for x in centre),
    )


# ---------------------------------------------------------------------- rendering
def render_head(
    mesh: HeadMesh, cameras: Cameras, background: float, batch: int = 8, backend: Optional[str] = None,
    interrupt: Optional[InterruptFn] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour [B,H,W,3] on ``background`` and coverage [B,H,W,1] of a textured / vertex-coloured head."""
    from ..render import render_mesh

    if mesh.texture is None and mesh.vertex_colors is None:
        raise ValueError("Evaluate Head needs a textured head (a texture with UVs, or vertex colours); this mesh has neither")
    if mesh.texture is not None and not mesh.has_uv:
        raise ValueError("the head has a texture but no UVs; unwrap it (xatlas) before evaluating")
    dev = mesh.device
    tex = mesh.texture.to(dev) if mesh.texture is not None else None
    colors, masks = [], []
    for i in range(0, len(cameras), batch):
        if interrupt is not None:
            interrupt()
        cams = cameras[list(range(i, min(i + batch, len(cameras))))].to(dev)
        with torch.no_grad():
            out = render_mesh(
                mesh.vertices, mesh.faces, cams,
                vertex_colors=None if tex is not None else mesh.vertex_colors,
                uvs=mesh.uvs if tex is not None else None,
                uv_faces=mesh.uv_faces if tex is not None else None,
                texture=tex, antialias=True, background=background, backend=backend,
            )
        colors.append(torch.nan_to_num(out.color.float()).clamp(0, 1).cpu())
        masks.append(out.mask.float().clamp(0, 1).cpu())
    return torch.cat(colors), torch.cat(masks)


# ---------------------------------------------------------------------- metrics
def _as_image(portrait: torch.Tensor) -> torch.Tensor:
    img = torch.as_tensor(portrait, dtype=torch.float32)
    if img.dim() == 4:
        if img.shape[0] != 1:
            raise ValueError(f"evaluate one portrait at a time, got a batch of {img.shape[0]}")
        img = img[0]
    if img.dim() != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"portrait must be an RGB image [H,W,3] in 0..1, got {tuple(img.shape)}")
    return torch.nan_to_num(img[..., :3]).clamp(0, 1).cpu()


def _round(x: Optional[float], n: int = 4) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else round(float(x), n)


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def evaluate_head(
    mesh: HeadMesh,
    portrait: torch.Tensor,
    reference_camera: Any = None,
    *,
    lpips_model: Optional[LPIPSAlex] = None,
    image_embedder: Optional[ImageEmbedder] = None,
    recognizers: Optional[dict[str, Optional[FaceRecognizer]]] = None,
    skipped: Optional[dict[str, str]] = None,
    config: Optional[EvalConfig] = None,
    progress: Optional[ProgressFn] = None,
    interrupt: Optional[InterruptFn] = None,
    identity_photos: Optional[Sequence[Any]] = None,
) -> EvalResult:
    """Render ``mesh`` at the reference view and round the head, and score it against ``portrait``.

    identity_photos: every photo of the person (several-photo input: [N,H,W,3] or a list of [H,W,3]
      0..1 images, any sizes). Identity is then also scored against each photo: per recogniser,
      ``id.<name>.photos`` gives each photo's ID-view mean and views, and their mean over the photos.

    recognizers: name → recogniser (insightface / dlib); None values are skipped with the note in
      ``skipped[name]``. ``skipped`` also carries the reasons for a missing ``lpips_model`` ("lpips")
      or ``image_embedder`` ("clip_i"), written into the report instead of a number.
    """
    cfg = config or EvalConfig()
    cfg.validate()
    skipped = dict(skipped or {})
    recognizers = dict(recognizers or {})
    image = _as_image(portrait)
    H, W = image.shape[:2]
    ref_cam = resolve_reference_camera(reference_camera, H, W)

    id_names = {float(a): n for n, a in cfg.id_views}
    azimuths = sorted({float(a) for a in cfg.sweep_azimuths} | set(id_names))
    sweep_set = {float(a) for a in cfg.sweep_azimuths}
    view_cams = orbit_like(ref_cam, azimuths, cfg.sweep_resolution)

    rec_items = [(n, r) for n, r in recognizers.items() if r is not None]
    photos = [_as_image(p) for p in (list(identity_photos) if identity_photos is not None else [])]
    total = 3 + len(rec_items) * (len(azimuths) + 2 + len(photos)) + (1 if image_embedder is not None else 0)
    step = 0

    def tick(preview: Optional[torch.Tensor] = None) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total, preview)
        if interrupt is not None:
            interrupt()

    # --- renders
    bg_ref = 0.0 if cfg.reference_background == "input" else cfg.background
    ref_color, ref_mask = render_head(mesh, ref_cam, bg_ref, 1, cfg.render_backend, interrupt)
    if cfg.reference_background == "input":
        # Render on black then composite "over" the portrait: only the head region can differ, as the
        # paper compares heads, not the photo's backdrop (which a head mesh cannot reproduce).
        ref_render = ref_color + image[None] * (1 - ref_mask)
    else:
        ref_render = ref_color
    ref_render = ref_render.clamp(0, 1)
    tick(ref_render[0])  # the contract's preview: [H,W,3] float 0..1 (core/stage_types.py ProgressFn)
    views, masks = render_head(mesh, view_cams, cfg.background, cfg.render_batch, cfg.render_backend, interrupt)
    tick(views[len(views) // 2])

    el = float(orbit_elevation(ref_cam))
    view_rows: list[dict[str, Any]] = []
    for i, a in enumerate(azimuths):
        row: dict[str, Any] = {"azimuth": a, "elevation": round(el, 3), "coverage": _round(float(masks[i].mean()))}
        row["in_sweep"] = a in sweep_set
        if a in id_names:
            row["id_view"] = id_names[a]
        view_rows.append(row)

    report: dict[str, Any] = {
        "format": "idsculpt-eval/1",
        "input": {"height": H, "width": W},
        "mesh": {"vertices": int(mesh.vertices.shape[0]), "faces": int(mesh.faces.shape[0]), "textured": mesh.texture is not None},
        "reference_camera": {"eg3d_label": [round(float(x), 6) for x in ref_cam.eg3d_label()[0]], "coverage": _round(float(ref_mask.mean()))},
        "protocol": {
            "id_views": {n: a for n, a in cfg.id_views},
            "sweep_azimuths": [float(a) for a in cfg.sweep_azimuths],
            "view_resolution": cfg.sweep_resolution,
            "view_background": cfg.background,
            "reference_background": cfg.reference_background,
            "lpips_resolution": cfg.lpips_resolution,
            "azimuth_sign": "+ = camera on the subject's left (+x), 0 = frontal",
            "note": "ID view angles are this pack's choice (the paper names the views, not the angles)",
        },
    }

    # --- LPIPS at the reference view
    if lpips_model is not None:
        d = float(lpips_distance(lpips_model, image[None], ref_render, cfg.lpips_resolution)[0])
        if math.isfinite(d):
            report["lpips"] = {"value": float(f"{d:.6g}"), "net": "alex", "version": "0.1"}
        else:  # only broken weights get here; say so rather than let a NaN reach the report
            report["lpips"] = {"skipped": "LPIPS returned a non-finite value: check the LPIPS weight files"}
    else:
        report["lpips"] = {"skipped": skipped.get("lpips", "no LPIPS model given")}
    tick()

    # --- CLIP-I over the sweep
    if image_embedder is not None:
        with torch.no_grad():
            e_in = torch.as_tensor(image_embedder(image[None])).float().reshape(1, -1)
            e_views = torch.cat(
                [torch.as_tensor(image_embedder(views[i:i + cfg.render_batch])).float().reshape(-1, e_in.shape[1])
                 for i in range(0, len(views), cfg.render_batch)]
            )
        sims = torch.nn.functional.cosine_similarity(e_views, e_in.expand_as(e_views), dim=-1).tolist()
        for row, s in zip(view_rows, sims):
            row["clip_i"] = _round(s)
        report["clip_i"] = {
            "sweep_mean": _round(_mean([s for row, s in zip(view_rows, sims) if row["in_sweep"]])),
            "id_views_mean": _round(_mean([s for row, s in zip(view_rows, sims) if "id_view" in row])),
        }
        tick()
    else:
        report["clip_i"] = {"skipped": skipped.get("clip_i", "no CLIP vision model given")}

    # --- identity
    curves: dict[str, list[tuple[float, Optional[float]]]] = {}
    report["id"] = {}
    for name in recognizers:
        if recognizers[name] is None:
            report["id"][name] = {"skipped": skipped.get(name, f"no {name} recogniser given")}
    for name, rec in rec_items:
        inp = rec.embed(to_uint8_rgb(image))
        tick()
        if inp is None:
            report["id"][name] = {"skipped": f"{name} finds no face in the input portrait"}
            step += len(azimuths) + 1 + len(photos)
            continue
        ref_face = rec.embed(to_uint8_rgb(ref_render[0]))
        tick()
        scores: list[Optional[float]] = []
        view_faces: list[Any] = []
        for i, row in enumerate(view_rows):
            f = rec.embed(to_uint8_rgb(views[i]))
            view_faces.append(f)
            s = cosine(inp.embedding, f.embedding) if f is not None else None
            cell: dict[str, Any] = {"detected": f is not None, "score": _round(s)}
            if name == "dlib" and f is not None:
                cell["distance"] = _round(float(np.linalg.norm(inp.embedding - f.embedding)))
            row[name] = cell
            scores.append(s)
            tick()
        curves[name] = list(zip(azimuths, scores))
        id_rows = [(row, s) for row, s in zip(view_rows, scores) if "id_view" in row]
        sweep_rows = [(row, s) for row, s in zip(view_rows, scores) if row["in_sweep"]]
        entry: dict[str, Any] = {
            # mean over the ID views where a face was found; misses are reported, not averaged in...
            "mean": _round(_mean([s for _, s in id_rows])),
            # ...and, so a head whose faces vanish cannot look better, also with misses counted as 0.
            "mean_misses_as_zero": _round(float(np.mean([s if s is not None else 0.0 for _, s in id_rows])) if id_rows else None),
            "views": {row["id_view"]: _round(s) for row, s in id_rows},
            "id_views_detection_rate": _round(float(np.mean([s is not None for _, s in id_rows])) if id_rows else None),
            "sweep_detection_rate": _round(float(np.mean([s is not None for _, s in sweep_rows])) if sweep_rows else None),
            "reference_view": {"detected": ref_face is not None,
                                "score": _round(cosine(inp.embedding, ref_face.embedding)) if ref_face is not None else None},
            "input_face_bbox": [round(float(x), 1) for x in inp.bbox],
        }
        if photos:
            entry["photos"] = _per_photo_identity(rec, photos, view_rows, view_faces, tick)
        if name == "dlib":
            entry["same_person_distance_threshold"] = DLIB_SAME_PERSON_DISTANCE
            entry["note"] = ("dlib descriptors are not zero-mean: cosine between different people is typically "
                             "0.75-0.86 and between two photos of one person ~0.97; distance < 0.6 means same person")
        report["id"][name] = entry
    report["views"] = view_rows

    marks = [(a, n) for n, a in cfg.id_views]
    thumbs = [(a, to_uint8_rgb(views[i])) for i, a in enumerate(azimuths)]
    curve = draw_id_curve(curves, marks, title="ID cosine to the input vs render azimuth", thumbnails=thumbs)
    if not curves:
        from PIL import ImageDraw

        ImageDraw.Draw(curve).text((80, 60), "no face recogniser available: " + "; ".join(
            str(v.get("skipped")) for v in report["id"].values()) if report["id"] else "no face recogniser given", fill=(200, 0, 0))
    return EvalResult(report, curve, ref_render, views, masks)


def _per_photo_identity(rec: FaceRecognizer, photos: list[torch.Tensor], view_rows: list[dict[str, Any]],
                        view_faces: list[Any], tick: Callable[[], None]) -> dict[str, Any]:
    """ID cosine of the renders' faces to each photo of the person: per photo (mean over the ID views
    where a face was found, and per view) and the mean over the photos whose face was found."""
    per: list[dict[str, Any]] = []
    for k, photo in enumerate(photos):
        ph = rec.embed(to_uint8_rgb(photo))
        tick()
        if ph is None:
            per.append({"photo": k, "detected": False, "mean": None, "views": {}})
            continue
        rows = [(row["id_view"], cosine(ph.embedding, f.embedding) if f is not None else None)
                for row, f in zip(view_rows, view_faces) if "id_view" in row]
        per.append({"photo": k, "detected": True, "mean": _round(_mean([s for _, s in rows])),
                    "views": {n: _round(s) for n, s in rows}})
    found = [p["mean"] for p in per if p["mean"] is not None]
    return {"count": len(photos), "per_photo": per, "mean": _round(_mean(found)),
            "note": "mean over the photos of each photo's ID-view mean (photos without a detected face left out)"}


def orbit_elevation(reference: Cameras) -> float:
    """Elevation in degrees of the reference camera about its orbit centre (see orbit_like)."""
    p = reference.position[0].double()
    fwd = reference.cam2world[0, :3, 2].double()
    rel = p - (p + fwd * torch.clamp(-(p @ fwd), min=0.0))
    return math.degrees(math.asin(max(-1.0, min(1.0, float(rel[1] / rel.norm().clamp_min(1e-9))))))
