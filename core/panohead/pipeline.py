"""Stage 1 of ID-Sculpt as one call: portrait -> aligned crop + camera -> initial head mesh + GAN views.

``run_stage1`` uses PanoHead when a generator is given (inversion, PTI, density mesh, volume-
rendered supervision) and the procedural template head otherwise; ``Stage1Result.init`` says which.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..camera import Cameras
from ..mesh import HeadMesh
from ..stage_types import InterruptFn, ProgressFn
from .align import AlignedPortrait, align_portrait
from .extract import GanViews, extract_mesh, gan_view_cameras, render_gan_views
from .invert import InversionConfig, invert
from .perceptual import VGG16Perceptual
from .template import place_template, render_sdf_views, template_mesh
from .triplane import TriPlaneGenerator


@dataclass
class Stage1Result:
    mesh: HeadMesh  # initial head mesh, world frame of core.camera
    reference_camera: Cameras  # the portrait's camera (1 camera, image size of the crop)
    aligned: torch.Tensor  # [1,H,W,3] 0..1 aligned portrait (PanoHead crop)
    gan_views: GanViews  # supervision views (cameras, world normals, masks)
    init: str  # "panohead" or "template"
    landmarks: Optional[np.ndarray] = None  # [478,3] in crop pixels
    ws: Optional[torch.Tensor] = None
    losses: dict = field(default_factory=dict)
    info: str = ""


def _progress_slice(progress: Optional[ProgressFn], start: int, span: int, total: int) -> Optional[ProgressFn]:
    if progress is None:
        return None

    def f(step: int, sub_total: int, preview=None) -> None:
        progress(start + int(round(step / max(sub_total, 1) * span)), total, preview)

    return f


def run_stage1(portrait: np.ndarray, generator: Optional[TriPlaneGenerator] = None, perceptual: Optional[VGG16Perceptual] = None,
               cfg: InversionConfig = InversionConfig(), mesh_resolution: int = 512, mesh_level: float = 20.0,
               view_resolution: int = 256, n_views: int = 40, landmarks: Optional[np.ndarray] = None,
               aligned: Optional[AlignedPortrait] = None, progress: Optional[ProgressFn] = None,
               interrupt: Optional[InterruptFn] = None, device: torch.device | str = "cpu") -> Stage1Result:
    """Portrait (RGB uint8 [H,W,3] or float 0..1) -> Stage1Result. ``aligned`` skips the alignment.
    ``device`` runs the template head's meshing and tracing (PanoHead runs where the generator is)."""
    al = aligned or align_portrait(portrait, landmarks)
    image = torch.from_numpy(al.image.astype(np.float32) / 255.0)[None]
    ref_cam = al.cameras
    cams = gan_view_cameras(n_views=n_views, resolution=view_resolution)
    if generator is None:
        # fallback: template head placed by the landmarks at the reference camera
        placement = place_template(al.landmarks, ref_cam)
        mesh = template_mesh(min(mesh_resolution, 160), placement, device=device).to("cpu")
        if interrupt is not None:
            interrupt()
        normals, masks = render_sdf_views(placement.sdf, cams.to(device))
        views = GanViews(cams, normals.cpu(), masks.cpu())
        info = (f"init=template (no PanoHead checkpoint): scale {placement.scale:.3f}, translation "
                f"{tuple(round(v, 3) for v in placement.translation)}; pose yaw/pitch/roll {tuple(round(a, 1) for a in al.yaw_pitch_roll)}")
        if progress is not None:
            progress(1, 1, image[0])
        return Stage1Result(mesh, ref_cam, image, views, "template", al.landmarks, info=info)
    if perceptual is None:
        raise ValueError("PanoHead inversion needs the VGG16 perceptual network (see docs/PANOHEAD.md)")
    steps = cfg.w_steps + cfg.pti_steps
    total = steps + 20
    res = invert(generator, image, al.label, perceptual, cfg, _progress_slice(progress, 0, steps, total) if progress else None, interrupt)
    G = res.generator
    ref_cam = Cameras.from_eg3d_label(res.label.cpu(), al.image.shape[0])  # after camera self-adaptation
    with torch.no_grad():
        planes = G.planes(res.ws, noise_mode="const")
    mesh = extract_mesh(G, planes=planes, resolution=mesh_resolution, level=mesh_level, interrupt=interrupt)
    if progress is not None:
        progress(steps + 10, total, None)
    views = render_gan_views(G, planes=planes, cameras=cams, resolution=view_resolution, seed=cfg.seed, interrupt=interrupt)
    if progress is not None:
        progress(total, total, None)
    def _span(losses: list[float]) -> str:
        return f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "(0 steps)"

    steps_mode = "/".join(f"{res.modes.get(k, {}).get('mode', 'eager')} {res.modes.get(k, {}).get('seconds', 0.0):.1f} s"
                          for k in ("w", "pti"))
    info = (f"init=panohead: W+ loss {_span(res.w_losses)}, PTI loss {_span(res.pti_losses)} (steps: {steps_mode}); "
            f"mesh {mesh.vertices.shape[0]} vertices at {mesh_resolution}^3; camera shift "
            f"{tuple(round(float(v), 3) for v in (res.label[0, [3, 7, 11]] - al.label[0, [3, 7, 11]].to(res.label)))}; pose yaw/pitch/roll {tuple(round(a, 1) for a in al.yaw_pitch_roll)}")
    return Stage1Result(mesh, ref_cam, image, views, "panohead", al.landmarks, res.ws,
                        {"w": res.w_losses, "pti": res.pti_losses}, info)
