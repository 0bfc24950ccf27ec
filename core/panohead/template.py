"""A procedural template head: the initialisation for users without the PanoHead checkpoint.

Our own asset, no third-party data: a signed distance field made of ellipsoids joined with smooth
unions (cranium, face/jaw, chin, brow ridge, nose, ears, neck; eye sockets carved with a smooth
subtraction), in PanoHead's world (+y up, face toward +z, ~1 unit ≈ 0.4 m: the eyes are ~0.16
apart, the head sits at the origin like PanoHead heads under the reference camera). It is meshed
with marching cubes and placed by the portrait's face landmarks: scale and translation that make
its eye, nose and mouth keypoints project onto the detected ones through the reference camera.
The same SDF, sphere-traced, gives exact normals and masks for the 40 supervision views.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import Cameras
from ..dmtet.procedural import ellipsoid_sdf as _ellipsoid
from ..dmtet.procedural import smax, smin
from ..mesh import HeadMesh

# (centre xyz, radii xyz) in world units
_CRANIUM = ((0.0, 0.10, -0.03), (0.19, 0.21, 0.235))
_FACE = ((0.0, -0.06, 0.06), (0.145, 0.17, 0.15))
_CHIN = ((0.0, -0.19, 0.115), (0.065, 0.05, 0.065))
_BROW = ((0.0, 0.085, 0.165), (0.13, 0.035, 0.05))
_NOSE = ((0.0, -0.015, 0.205), (0.028, 0.07, 0.05))
_NOSE_TIP = ((0.0, -0.05, 0.225), (0.035, 0.03, 0.035))
_EARS = (((0.185, 0.02, -0.01), (0.03, 0.065, 0.045)), ((-0.185, 0.02, -0.01), (0.03, 0.065, 0.045)))
_NECK = ((0.0, -0.33, -0.04), (0.095, 0.22, 0.1))
_SOCKETS = (((0.075, 0.035, 0.185), 0.032), ((-0.075, 0.035, 0.185), 0.032))
_LIPS = ((0.0, -0.115, 0.175), (0.07, 0.022, 0.03))

# keypoints (world) matching MediaPipe landmarks: eye centres (image-left eye = subject's right, -x),
# nose tip, mouth corners
KEYPOINTS = {
    "eye_img_left": (-0.075, 0.035, 0.17),
    "eye_img_right": (0.075, 0.035, 0.17),
    "nose_tip": (0.0, -0.05, 0.255),
    "mouth_img_left": (-0.065, -0.115, 0.175),
    "mouth_img_right": (0.065, -0.115, 0.175),
}
_MP_KEYPOINTS = {
    "eye_img_left": (33, 160, 158, 133, 153, 144),
    "eye_img_right": (362, 385, 387, 263, 373, 380),
    "nose_tip": (4,),
    "mouth_img_left": (61,),
    "mouth_img_right": (291,),
}


def template_sdf(p: torch.Tensor) -> torch.Tensor:
    """Signed distance (approximate, negative inside) of the template head at points [...,3]."""
    d = smin(_ellipsoid(p, *_CRANIUM), _ellipsoid(p, *_FACE), 0.08)
    d = smin(d, _ellipsoid(p, *_CHIN), 0.05)
    d = smin(d, _ellipsoid(p, *_NECK), 0.06)
    d = smin(d, _ellipsoid(p, *_BROW), 0.03)
    d = smin(d, _ellipsoid(p, *_NOSE), 0.025)
    d = smin(d, _ellipsoid(p, *_NOSE_TIP), 0.02)
    d = smin(d, _ellipsoid(p, *_LIPS), 0.02)
    for c, r in _EARS:
        d = smin(d, _ellipsoid(p, c, r), 0.02)
    for c, r in _SOCKETS:
        sphere = (p - torch.tensor(c, dtype=p.dtype, device=p.device)).norm(dim=-1) - r
        d = smax(d, -sphere, 0.015)
    return d


@dataclass
class TemplatePlacement:
    scale: float = 1.0
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def sdf(self, p: torch.Tensor) -> torch.Tensor:
        t = torch.tensor(self.translation, dtype=p.dtype, device=p.device)
        return template_sdf((p - t) / self.scale) * self.scale


def template_mesh(resolution: int = 160, placement: Optional[TemplatePlacement] = None, box: float = 1.0,
                  device: torch.device | str = "cpu") -> HeadMesh:
    """Marching-cubes mesh of the (placed) template over [-box/2, box/2]³, outward CCW faces,
    cut flat at the bottom of the box (the neck), watertight. The SDF is smooth: 160³ voxels
    (≈2.5 mm) resolve it; more only costs time."""
    from .extract import mesh_from_grid

    placement = placement or TemplatePlacement()
    lin = torch.linspace(-box / 2, box / 2, resolution, device=device)
    occupancy = torch.empty(resolution, resolution, resolution, device=device)
    yy, zz = torch.meshgrid(lin, lin, indexing="ij")
    yz = torch.stack([yy, zz], -1)
    step = max(1, (1 << 20) // (resolution * resolution))
    for i in range(0, resolution, step):  # x-slabs of ~1M points: bounded memory, few calls
        xs = lin[i: i + step]
        p = torch.cat([xs[:, None, None, None].expand(-1, resolution, resolution, 1), yz[None].expand(len(xs), -1, -1, -1)], -1)
        occupancy[i: i + len(xs)] = -placement.sdf(p)  # positive inside, like a density
    return mesh_from_grid(occupancy, box, level=0.0, border=1)


def place_template(landmarks_px: np.ndarray, cameras: Cameras, steps: int = 200) -> TemplatePlacement:
    """Scale + translation of the template so its keypoints project onto the landmarks (pixels of
    the camera's image) — least squares over reprojection error, starting from the identity."""
    kp = torch.tensor([KEYPOINTS[k] for k in KEYPOINTS], dtype=torch.float32)
    target = torch.tensor(np.stack([np.asarray(landmarks_px)[list(_MP_KEYPOINTS[k]), :2].mean(0) for k in KEYPOINTS]),
                          dtype=torch.float32)
    log_s = torch.zeros(1, requires_grad=True)
    t = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([log_s, t], lr=0.01)
    cam = cameras[0]
    size = float(cam.height)
    with torch.enable_grad():
        for _ in range(steps):
            pts = kp * log_s.exp() + t
            err = (cam.project(pts)[0] - target) / size
            loss = err.square().sum() + 1e-3 * t[2].square()  # depth is weakly observed: keep it near 0
            opt.zero_grad()
            loss.backward()
            opt.step()
    return TemplatePlacement(float(log_s.detach().exp()), tuple(float(v) for v in t.detach()))


@torch.no_grad()
def render_sdf_views(sdf, cameras: Cameras, max_steps: int = 96, eps: float = 1e-3, bound: float = 0.9
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere-trace an SDF: world-frame normals [B,H,W,3] (0 off the surface) and masks [B,H,W,1].

    Only rays that enter the bounding sphere (radius ``bound``) are marched, each from its entry
    point, and finished rays drop out of the batch: the cost follows the head's pixel count."""
    o, d = cameras.rays()
    shape = o.shape[:-1]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - bound * bound)
    enters = disc > 0
    sq = disc.clamp_min(0).sqrt()
    t = (-b - sq).clamp_min(0)
    t_exit = -b + sq
    hit = torch.zeros_like(enters)
    idx = torch.nonzero(enters).squeeze(-1)
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        dist = sdf(o[idx] + d[idx] * t[idx, None])
        done = dist.abs() < eps
        hit[idx[done]] = True
        t[idx] = t[idx] + torch.where(done, torch.zeros_like(dist), dist.clamp_min(eps * 0.5))
        keep = ~done & (t[idx] < t_exit[idx])
        idx = idx[keep]
    normals = torch.zeros_like(o)
    hid = torch.nonzero(hit).squeeze(-1)
    if hid.numel():
        p = o[hid] + d[hid] * t[hid, None]
        h = 1e-3
        grads = []
        for axis in range(3):
            off = torch.zeros(3, dtype=p.dtype, device=p.device)
            off[axis] = h
            grads.append((sdf(p + off) - sdf(p - off)) / (2 * h))
        normals[hid] = F.normalize(torch.stack(grads, -1), dim=-1)
    mask = hit.to(o.dtype)[:, None]
    return normals.reshape(*shape, 3), mask.reshape(*shape, 1)
