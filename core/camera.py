"""Cameras in one world convention, shared by every stage of the pack.

World frame (the EG3D / PanoHead frame, used everywhere in this pack):
  * right-handed, +y is up, the head looks toward +z (its front), +x is the subject's left
    (the viewer's right when looking at the face from the front);
  * the head sits at the origin and fits inside a radius of about 1.

Camera frame: OpenCV axes -- +x right, +y down, +z forward (into the scene). ``cam2world`` maps
camera coordinates to world coordinates; its translation column is the camera position.
This is what the EG3D 25-float camera label stores, so labels convert without axis juggling.

Orbit parameters: ``elevation`` in degrees (positive = camera above the head, looking down),
``azimuth`` in degrees (0 = in front of the face on +z, +90 = on the subject's left at +x,
±180 = behind), ``distance`` from the origin, ``fov`` the vertical field of view in degrees.

Images are row-major with row 0 at the top; pixel (i, j) has its centre at (j + 0.5, i + 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .held_tensors import held_tensors

# EG3D / PanoHead constants: normalised focal length (focal / image size) and camera radius.
EG3D_FOCAL = 4.2647
EG3D_RADIUS = 2.7


def _as_batch(x: float | Sequence[float] | torch.Tensor, n: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    if t.dim() == 0:
        t = t[None]
    if n is not None and t.shape[0] == 1 and n > 1:
        t = t.expand(n).clone()
    return t


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: Sequence[float] = (0.0, 1.0, 0.0)) -> torch.Tensor:
    """cam2world [B,4,4] (OpenCV axes) for cameras at ``eye`` [B,3] looking at ``target`` [B,3].

    ``up`` is the world up direction; the camera's +y (down) is its opposite as seen in the image.
    Degenerate when looking straight along ``up`` (elevation ±90°): callers keep |elevation| < 90.
    """
    eye = eye.reshape(-1, 3).float()
    if target is None:
        target = torch.zeros_like(eye)
    target = target.reshape(-1, 3).to(eye)
    up_t = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    right = torch.nn.functional.normalize(torch.cross(forward, up_t, dim=-1), dim=-1)  # camera +x
    down = torch.cross(forward, right, dim=-1)  # camera +y
    m = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    m[:, :3, 0] = right
    m[:, :3, 1] = down
    m[:, :3, 2] = forward
    m[:, :3, 3] = eye
    return m


def orbit_position(elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """World position [B,3] of an orbit camera (angles in degrees, see module docstring)."""
    el = torch.deg2rad(elevation)
    az = torch.deg2rad(azimuth)
    return torch.stack(
        [distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el), distance * torch.cos(el) * torch.cos(az)],
        dim=-1,
    )


@dataclass
class Cameras:
    """A batch of pinhole cameras sharing one image size.

    cam2world: [B,4,4] OpenCV-axes camera-to-world transforms.
    fov: [B] vertical field of view in degrees (square pixels, principal point at the centre).
    """

    cam2world: torch.Tensor
    fov: torch.Tensor
    height: int = 512
    width: int = 512

    def _comfy_cache_tensors(self) -> list:
        """Its tensors, for a host's RAM-pressure cache (core/held_tensors.py)."""
        return held_tensors(self)

    def __post_init__(self) -> None:
        if self.cam2world.dim() == 2:
            self.cam2world = self.cam2world[None]
        self.fov = _as_batch(self.fov, self.cam2world.shape[0]).to(self.cam2world)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def orbit(
        elevation: float | Sequence[float] | torch.Tensor,
        azimuth: float | Sequence[float] | torch.Tensor,
        distance: float | Sequence[float] | torch.Tensor = EG3D_RADIUS,
        fov: float | Sequence[float] | torch.Tensor = 30.0,
        resolution: int | tuple[int, int] = 512,
        target: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> "Cameras":
        """Orbit cameras looking at ``target``; scalar arguments broadcast over the batch."""
        el, az, d, fv = (_as_batch(x) for x in (elevation, azimuth, distance, fov))
        n = max(el.shape[0], az.shape[0], d.shape[0], fv.shape[0])
        el, az, d, fv = (_as_batch(x, n) for x in (el, az, d, fv))
        tgt = torch.as_tensor(target, dtype=torch.float32).expand(n, 3)
        eye = orbit_position(el, az, d) + tgt
        h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
        return Cameras(look_at(eye, tgt), fv, h, w)

    @staticmethod
    def from_eg3d_label(label: torch.Tensor, resolution: int | tuple[int, int] = 512) -> "Cameras":
        """Cameras from EG3D/PanoHead 25-float labels [B,25] (cam2world 16 + normalised K 9)."""
        label = torch.as_tensor(label, dtype=torch.float32).reshape(-1, 25)
        cam2world = label[:, :16].reshape(-1, 4, 4)
        fy = label[:, 16 + 4]  # K[1,1], focal / image height
        fov = torch.rad2deg(2 * torch.atan(0.5 / fy))
        h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
        return Cameras(cam2world, fov, h, w)

    # ------------------------------------------------------------------ conversions
    def eg3d_label(self) -> torch.Tensor:
        """EG3D 25-float labels [B,25]: flattened cam2world and intrinsics normalised by image size."""
        fy = self.focal_normalized()
        fx = fy * self.height / self.width
        k = torch.zeros(len(self), 3, 3, dtype=self.cam2world.dtype, device=self.cam2world.device)
        k[:, 0, 0], k[:, 1, 1] = fx, fy
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = 0.5, 0.5, 1.0
        return torch.cat([self.cam2world.reshape(-1, 16), k.reshape(-1, 9)], dim=-1)

    def __len__(self) -> int:
        return self.cam2world.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        idx = [idx] if isinstance(idx, int) else idx
        return Cameras(self.cam2world[idx], self.fov[idx], self.height, self.width)

    def first(self) -> "Cameras":
        """The first camera alone (batch 1): a portrait's reference camera when a batch of them is wired."""
        if len(self) == 0:
            raise ValueError("no camera in this Cameras batch")
        return self[:1]

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(self.cam2world.to(device), self.fov.to(device), self.height, self.width)

    def with_resolution(self, height: int, width: int | None = None) -> "Cameras":
        return Cameras(self.cam2world, self.fov, height, width or height)

    @staticmethod
    def cat(cams: Sequence["Cameras"]) -> "Cameras":
        h, w = cams[0].height, cams[0].width
        if any((c.height, c.width) != (h, w) for c in cams):
            raise ValueError("Cameras.cat needs cameras of one image size")
        return Cameras(torch.cat([c.cam2world for c in cams]), torch.cat([c.fov for c in cams]), h, w)

    # ------------------------------------------------------------------ geometry
    @property
    def device(self) -> torch.device:
        return self.cam2world.device

    @property
    def position(self) -> torch.Tensor:
        return self.cam2world[:, :3, 3]

    def world2cam(self) -> torch.Tensor:
        # inv_ex: torch.linalg.inv checks for a singular matrix with a host sync on every call (every
        # render); a camera pose is a rigid transform, never singular
        return torch.linalg.inv_ex(self.cam2world)[0]

    def focal_normalized(self) -> torch.Tensor:
        """Focal length divided by image height, [B]."""
        return 0.5 / torch.tan(torch.deg2rad(self.fov) / 2)

    def focal_pixels(self) -> torch.Tensor:
        return self.focal_normalized() * self.height

    def projection(self, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
        """[B,4,4] clip-from-camera (OpenCV camera) matrix for rasterisers using GL clip space.

        Clip y follows OpenCV's y (down) so that rasteriser row 0 (clip y = -1) is the image top:
        rendered images need no flip. w = camera z (depth in front of the camera).
        """
        f = self.focal_normalized()  # ndc_y = y * 2f / z
        p = torch.zeros(len(self), 4, 4, dtype=self.cam2world.dtype, device=self.device)
        p[:, 0, 0] = 2 * f * self.height / self.width
        p[:, 1, 1] = 2 * f
        p[:, 2, 2] = (far + near) / (far - near)
        p[:, 2, 3] = -2 * far * near / (far - near)
        p[:, 3, 2] = 1.0
        return p

    def full_projection(self, near: float = 0.1, far: float = 100.0) -> torch.Tensor:
        """[B,4,4] clip-from-world matrix."""
        return self.projection(near, far) @ self.world2cam()

    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points [B,N,3] or [N,3] → camera-frame points [B,N,3]."""
        if points.dim() == 2:
            points = points[None].expand(len(self), -1, -1)
        w2c = self.world2cam()
        return points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """World points → pixel coordinates [B,N,2] (x right, y down, pixel centres at +0.5)."""
        pc = self.to_camera(points)
        f = self.focal_pixels()[:, None]
        x = pc[..., 0] / pc[..., 2] * f + self.width / 2
        y = pc[..., 1] / pc[..., 2] * f + self.height / 2
        return torch.stack([x, y], dim=-1)

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray origins [B,H,W,3] and unit directions [B,H,W,3] through pixel centres, world frame."""
        dev, dt = self.device, self.cam2world.dtype
        ys, xs = torch.meshgrid(
            torch.arange(self.height, device=dev, dtype=dt) + 0.5,
            torch.arange(self.width, device=dev, dtype=dt) + 0.5,
            indexing="ij",
        )
        f = self.focal_pixels()[:, None, None]
        d = torch.stack(
            [(xs - self.width / 2) / f, (ys - self.height / 2) / f, torch.ones_like(xs).expand_as(f * xs)], dim=-1
        )
        d = torch.nn.functional.normalize(d @ self.cam2world[:, None, :3, :3].transpose(-1, -2), dim=-1)
        o = self.position[:, None, None, :].expand_as(d)
        return o, d


def eg3d_frontal_label() -> torch.Tensor:
    """PanoHead/EG3D's frontal camera label [1,25]: radius 2.7 on +z, focal 4.2647."""
    fov = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))
    return Cameras.orbit(0.0, 0.0, EG3D_RADIUS, fov).eg3d_label()


def framing_distance(radius: float, fov: float, margin: float = 1.0) -> float:
    """Distance from a sphere's centre at which the sphere, enlarged by ``margin``, just fills a vertical
    field of view of ``fov`` degrees (its tangent rays from the camera lie on the view's edges)."""
    return margin * radius / math.sin(math.radians(fov) / 2)


def preview_cameras(azimuths: int | Sequence[float] = 4, resolution: int = 256, distance: float = 3.8, fov: float = 40.0,
                    elevation: float = 10.0, frame: torch.Tensor | None = None, margin: float = 1.1) -> Cameras:
    """Orbit cameras for preview images of a head.

    ``azimuths``: degrees, or a count n for n cameras evenly spaced from the front (0, 360/n, ... wrapped
    to (-180, 180]). Without ``frame`` they orbit the origin at ``distance``; the defaults frame the
    sculpting frame's head (largest |coordinate| 0.9: it fits at 3.8 and 40 degrees). ``frame``: vertices
    [V,3] to frame instead: the cameras look at their bounding-box centre from the distance at which
    their bounding sphere, enlarged by ``margin``, just fills the vertical field of view (``distance`` is
    then unused).
    """
    if isinstance(azimuths, int):
        if azimuths < 1:
            raise ValueError(f"preview_cameras needs at least one camera, got {azimuths}")
        az = torch.linspace(0, 360, azimuths + 1)[:-1]
        az = torch.where(az > 180, az - 360, az)
    else:
        az = torch.as_tensor(list(azimuths), dtype=torch.float32)
    if frame is None:
        return Cameras.orbit(elevation, az, distance, fov, resolution)
    v = frame.detach().float().reshape(-1, 3).cpu()
    if v.shape[0] == 0:
        raise ValueError("preview_cameras cannot frame an empty vertex set")
    centre = (v.min(0).values + v.max(0).values) / 2
    radius = float((v - centre).norm(dim=-1).max())
    return Cameras.orbit(elevation, az, framing_distance(radius, fov, margin), fov, resolution, target=centre.tolist())


# ---------------------------------------------------------------------- normals between frames
def view_to_world_normals(normals_view: torch.Tensor, camera: Cameras) -> torch.Tensor:
    """OpenGL-axes view normals (x right, y up, z toward the camera) -> world frame.

    core.camera cameras use OpenCV axes (y down, z forward), so (x, y, z)_view = (x, -y, -z)_opencv.
    """
    n_cv = normals_view * torch.tensor([1.0, -1.0, -1.0], dtype=normals_view.dtype, device=normals_view.device)
    rot = camera.cam2world[0, :3, :3].to(normals_view)
    return n_cv @ rot.T


def world_to_view_normals(normals_world: torch.Tensor, camera: Cameras) -> torch.Tensor:
    rot = camera.cam2world[0, :3, :3].to(normals_world)
    n_cv = normals_world @ rot
    return n_cv * torch.tensor([1.0, -1.0, -1.0], dtype=normals_world.dtype, device=normals_world.device)
