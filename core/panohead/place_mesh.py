"""Stage 1 from any head mesh: place a given mesh on the portrait by its face landmarks.

Beyond the paper (issue 23): instead of PanoHead's inversion or the procedural template, the initial
geometry is a head mesh the user brings (the pack's own, a core MESH from another generator, a GLB/OBJ).
It is placed as the template head is placed -- by the portrait's face landmarks through the reference
camera -- and its renders from the 40 GAN-view cameras become the stage-A targets:

1. Orientation: the user's ``up``/``front`` axes turn the mesh into the world frame (+y up, face toward
   +z; ``core.dmtet.sdf_init.axis_rotation``).
2. Landmarks on the mesh: a frontal render (texture or vertex colours when the mesh has them, shaded
   by a Lambert light so shape shows; plain Lambert-shaded grey otherwise: MediaPipe finds a face on
   such a render, even on the template head) goes through the pack's landmark detector; a second render
   framed on the found face refines them. Each landmark is lifted to 3D by casting its pixel's ray onto
   the mesh (``core.face.raycast.raycast``); landmarks whose ray misses are left out.
3. Similarity to the portrait: the portrait's landmarks are lifted into the reference camera's frame
   with MediaPipe's own depth (weak perspective at the camera's distance to the head centre); a
   Umeyama fit of the mesh's 3D landmarks to them starts a least-squares refinement of the landmarks'
   reprojection error in the reference view (scale, rotation, translation), with a weak prior holding
   the landmarks' mean depth where the 3D fit put it (depth and scale are nearly interchangeable
   through a camera 2.7 units away; the template's fit needs the same prior).
4. Views: the placed mesh rasterised from the GAN-view cameras: world normals (turned toward the
   camera: a visible surface faces it, whatever the mesh's winding) and masks (largest connected
   component, as PanoHead's views are saved), in ``GanViews``' convention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..camera import Cameras, framing_distance, look_at
from ..dmtet.sdf_init import axis_rotation
from ..face.raycast import pixel_rays, raycast
from ..face.similarity import umeyama
from ..face.landmarks import KEYPOINTS_7, detect_landmarks
from ..mesh import HeadMesh
from ..stage_types import InterruptFn
from .extract import GanViews, _largest_cc_mask, gan_view_cameras

AXES = ("+x", "-x", "+y", "-y", "+z", "-z")
#: field of view of the landmark renders (narrow: near-orthographic, like a portrait lens)
RENDER_FOV = 20.0
#: the face render spans this many face widths (MediaPipe's face detector wants some context around the face)
FACE_FRAMING = 2.2
#: MediaPipe's face-detection threshold on renders (a render is known to hold one head)
RENDER_MIN_CONFIDENCE = 0.3


@dataclass
class MeshPlacement:
    """world = scale · rotation @ v + translation, for v in the mesh's own (file) frame."""

    scale: float
    rotation: torch.Tensor  # [3,3]
    translation: torch.Tensor  # [3]
    # diagnostics: reprojection errors in reference-view pixels, landmark counts, the detector's notes
    report: dict = field(default_factory=dict)

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        r, t = self.rotation.to(points), self.translation.to(points)
        return self.scale * points @ r.T + t


# --------------------------------------------------------------------------------------- rendering
def _framing_camera(centre: torch.Tensor, radius: float, resolution: int) -> Cameras:
    """A camera on the +z side of ``centre`` looking along -z whose view holds a sphere of ``radius``."""
    eye = (centre + torch.tensor([0.0, 0.0, framing_distance(radius, RENDER_FOV, margin=1.05)]))[None]
    return Cameras(look_at(eye, centre[None]), torch.tensor([RENDER_FOV]), resolution, resolution)


@torch.no_grad()
def render_for_landmarks(mesh: HeadMesh, camera: Cameras, backend: Optional[str] = None,
                         device: torch.device | str = "cpu") -> np.ndarray:
    """RGB uint8 [H,W,3] of the mesh for MediaPipe: its texture / vertex colours shaded by a frontal Lambert
    light, or Lambert-shaded grey when it has none; white background."""
    from ..render import render_mesh

    mesh, camera = mesh.to(device), camera.to(device)
    tex = mesh.texture if (mesh.has_uv and mesh.texture is not None) else None
    out = render_mesh(mesh.vertices, mesh.faces, camera, vertex_colors=None if tex is not None else mesh.vertex_colors,
                      uvs=mesh.uvs if tex is not None else None, uv_faces=mesh.uv_faces if tex is not None else None,
                      texture=tex, antialias=False, backend=backend)  # MediaPipe needs no antialiasing
    n = out.normal_view[0]
    light = torch.nn.functional.normalize(torch.tensor([0.3, 0.4, 1.0]), dim=0).to(n)
    # |n.l|: a mesh with inward-wound faces shades the same as an outward one
    lambert = (n @ light).abs()[..., None]
    cover = out.mask[0]
    if out.color is not None:
        rgb = out.color[0] * (0.55 + 0.45 * lambert)
    else:
        rgb = (0.15 + 0.8 * lambert).expand(-1, -1, 3)
    img = rgb * cover + (1 - cover)
    return (img.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def _no_face_message(up: str, front: str, what: str) -> str:
    return (f"MediaPipe found no face on the {what} render of the head mesh seen from its front (front axis {front}, up "
            f"axis {up}). Is the face looking along {front}, with the top of the head toward {up}? Turn the mesh with the "
            "up_axis / front_axis inputs (glTF and most generators: up +y, front +z; some OBJ exports: up +z, front -y), "
            "or check that the mesh has a face (eyes, nose, mouth) at all.")


@dataclass
class MeshLandmarks:
    points: torch.Tensor  # [478,3] in the oriented mesh's frame (rows with valid=False are meaningless)
    valid: torch.Tensor  # [478] bool: the landmark's ray hit the mesh
    pixels: torch.Tensor  # [478,2] landmark pixels in the face render
    camera: Cameras  # the face render's camera
    image: np.ndarray  # the face render (for previews / debugging)
    log: str = ""


def find_mesh_landmarks(mesh: HeadMesh, up: str = "+y", front: str = "+z", resolution: int = 512,
                        model_path: Optional[str] = None, backend: Optional[str] = None,
                        device: torch.device | str = "cpu") -> MeshLandmarks:
    """The 478 face landmarks on a mesh already turned to the world frame (face toward +z): detected on a
    frontal render of the whole mesh, refined on a render framed on the face, lifted by ray casting."""
    v = mesh.vertices.detach().float().cpu()
    lo, hi = v.min(0).values, v.max(0).values
    centre = (lo + hi) / 2
    radius = float((v - centre).norm(dim=-1).max())
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError("the head mesh has no extent (all vertices coincide) or non-finite vertices")
    mesh = mesh.to("cpu")
    logs = []

    def detect(cam: Cameras, what: str):
        img = render_for_landmarks(mesh, cam, backend, device)
        try:
            found = detect_landmarks(img, min_confidence=RENDER_MIN_CONFIDENCE, model_path=model_path,
                                     purpose="placing the head mesh")
        except RuntimeError as exc:
            if "found no face" in str(exc):
                return None, img
            raise
        return found, img

    cam = _framing_camera(centre, radius, resolution)
    found, img = detect(cam, "whole-mesh")
    if found is None:
        raise RuntimeError(_no_face_message(up, front, "whole-mesh"))
    logs.append(f"face found on the whole-mesh render ({found.backend})")
    px = found.points[:, :2].float()
    o, d = pixel_rays(cam, px[None])
    t, _, _ = raycast(o[0], d[0], v, mesh.faces)
    hit = torch.isfinite(t)
    if int(hit.sum()) >= 3:
        # second look, framed on the face: the landmarks of a face filling the render are more precise
        pts = o[0][hit] + d[0][hit] * t[hit, None]
        f_lo, f_hi = pts.min(0).values, pts.max(0).values
        f_centre = (f_lo + f_hi) / 2
        f_radius = 0.5 * FACE_FRAMING * float((f_hi - f_lo)[:2].max())
        cam2 = _framing_camera(f_centre, f_radius, resolution)
        found2, img2 = detect(cam2, "face")
        if found2 is not None:
            cam, found, img = cam2, found2, img2
            px = found.points[:, :2].float()
            o, d = pixel_rays(cam, px[None])
            t, _, _ = raycast(o[0], d[0], v, mesh.faces)
            hit = torch.isfinite(t)
            logs.append("refined on a face-framed render")
        else:
            logs.append("no face on the face-framed render: the whole-mesh landmarks are used")
    if int(hit.sum()) < 10:
        raise RuntimeError(f"only {int(hit.sum())} of 478 face landmarks found on the render lie on the mesh: "
                           + _no_face_message(up, front, "frontal"))
    pts = o[0] + d[0] * t.nan_to_num(posinf=0.0)[:, None]
    logs.append(f"{int(hit.sum())}/478 landmarks lifted onto the mesh")
    return MeshLandmarks(pts, hit, px, cam, img, "; ".join(logs))


def _lift_from_view(mesh: HeadMesh, camera: Cameras, model_path: Optional[str], backend: Optional[str],
                    device: torch.device | str = "cpu") -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Landmarks found on the mesh's render from ``camera``, lifted onto the mesh: (points [478,3], valid [478])."""
    img = render_for_landmarks(mesh, camera, backend, device)
    try:
        found = detect_landmarks(img, min_confidence=RENDER_MIN_CONFIDENCE, model_path=model_path, purpose="placing the head mesh")
    except RuntimeError as exc:
        if "found no face" in str(exc):
            return None
        raise
    o, d = pixel_rays(camera, found.points[None, :, :2].float())
    t, _, _ = raycast(o[0], d[0], mesh.vertices, mesh.faces)
    hit = torch.isfinite(t)
    if int(hit.sum()) < 10:
        return None
    return o[0] + d[0] * t.nan_to_num(posinf=0.0)[:, None], hit


# ------------------------------------------------------------------------------------------ fitting
def _rotvec_matrix(w: torch.Tensor) -> torch.Tensor:
    k = torch.zeros(3, 3, dtype=w.dtype, device=w.device)
    k[0, 1], k[0, 2], k[1, 2] = -w[2], w[1], -w[0]
    k = k - k.T
    return torch.linalg.matrix_exp(k)


def portrait_points_3d(landmarks_px: np.ndarray | torch.Tensor, camera: Cameras) -> torch.Tensor:
    """The portrait's landmarks [478,3] (x px, y px, MediaPipe z px-scaled) lifted into the world through
    ``camera``: weak perspective at the camera's distance to the world origin (PanoHead's head centre,
    MediaPipe's depth origin), z added along the ray."""
    lm = torch.as_tensor(np.asarray(landmarks_px), dtype=torch.float32)
    cam = camera.first()
    depth0 = float(cam.to_camera(torch.zeros(1, 3))[0, 0, 2])
    f = float(cam.focal_pixels()[0])
    z = depth0 * (1.0 + lm[:, 2] / f)
    o, d = pixel_rays(cam, lm[None, :, :2])  # t = camera depth
    return o[0] + d[0] * z[:, None]


def fit_similarity_to_portrait(mesh_points: torch.Tensor, valid: torch.Tensor, portrait_px: np.ndarray | torch.Tensor,
                               camera: Cameras, iterations: int = 30, depth_prior: float = 0.1
                               ) -> tuple[float, torch.Tensor, torch.Tensor, dict]:
    """Similarity (s, R, t) putting ``mesh_points`` [478,3] (rows ``valid``) on the portrait's landmarks seen
    by ``camera``: a Umeyama fit to the portrait's landmarks lifted to 3D, refined by Levenberg-Marquardt on
    the reprojection error (pixels / image height) with a weak prior holding the landmarks' mean depth
    (``depth_prior`` per unit of depth, against residuals in image heights). Returns (s, R, t, report)."""
    cam = camera.first()
    cam = Cameras(cam.cam2world.double(), cam.fov.double(), cam.height, cam.width)
    lm = torch.as_tensor(np.asarray(portrait_px), dtype=torch.float64)
    src = mesh_points[valid].double()
    dst3 = portrait_points_3d(lm.float(), camera)[valid].double()
    target = lm[valid, :2]
    s0, r0, t0 = umeyama(src, dst3)
    r0 = r0.double()
    size = float(cam.height)
    depth_init = float(cam.to_camera(s0 * src @ r0.T + t0.double())[0, :, 2].mean())

    def transform(theta: torch.Tensor) -> torch.Tensor:
        return theta[0].exp() * src @ (_rotvec_matrix(theta[1:4]) @ r0).T + theta[4:7]

    def residuals(theta: torch.Tensor) -> torch.Tensor:
        pts = transform(theta)
        err = (cam.project(pts)[0] - target).reshape(-1) / size
        prior = depth_prior * (cam.to_camera(pts)[0, :, 2].mean() - depth_init)
        return torch.cat([err / math.sqrt(src.shape[0]), prior[None]])

    theta = torch.cat([torch.tensor([math.log(s0)], dtype=torch.float64), torch.zeros(3, dtype=torch.float64), t0.double()])
    lam = 1e-3
    cost = float(residuals(theta).square().sum())
    for _ in range(iterations):
        r = residuals(theta)
        # 7 parameters: central differences in float64 (14 evaluations) beat ~950 backward passes
        eye = torch.eye(7, dtype=torch.float64) * 1e-6
        jac = torch.stack([(residuals(theta + e) - residuals(theta - e)) / 2e-6 for e in eye], 1)
        jtj, jtr = jac.T @ jac, jac.T @ r
        step = torch.linalg.solve(jtj + lam * torch.diag(jtj.diagonal().clamp_min(1e-12)), -jtr)
        cand = theta + step
        c_cost = float(residuals(cand).square().sum())
        if c_cost < cost:
            theta, lam = cand, max(lam / 3, 1e-9)
            done = cost - c_cost < 1e-12 * max(cost, 1e-30)
            cost = c_cost
            if done:
                break
        else:
            lam *= 10
    with torch.no_grad():
        s = float(theta[0].exp())
        rot = _rotvec_matrix(theta[1:4]) @ r0
        t = theta[4:7]
        res = (cam.project(transform(theta))[0] - target).norm(dim=-1)
        idx = torch.full((lm.shape[0],), -1, dtype=torch.long)
        idx[valid] = torch.arange(int(valid.sum()))
        kp = idx[list(KEYPOINTS_7)]
        kp_res = res[kp[kp >= 0]]
    report = {"landmarks_used": int(valid.sum()), "mean_px": float(res.mean()), "median_px": float(res.median()),
              "keypoint_mean_px": float(kp_res.mean()) if kp_res.numel() else float("nan"),
              "umeyama_scale": float(s0)}
    return s, rot.float(), t.float(), report


def place_mesh(mesh: HeadMesh, portrait_landmarks: np.ndarray, camera: Cameras, up: str = "+y", front: str = "+z",
               resolution: int = 512, model_path: Optional[str] = None, backend: Optional[str] = None,
               refine_passes: int = 2, device: torch.device | str = "cpu") -> tuple[HeadMesh, MeshPlacement]:
    """Place ``mesh`` (any frame, any scale) on the portrait: returns the placed mesh (UVs, texture and vertex
    colours kept) and the placement from the mesh's own frame to the world."""
    if mesh.faces.numel() == 0 or mesh.vertices.shape[0] < 3:
        raise ValueError("the head mesh holds no triangles")
    if not bool(torch.isfinite(mesh.vertices).all()):
        raise ValueError("the head mesh has non-finite vertex positions (NaN/inf)")
    lm = np.asarray(portrait_landmarks, dtype=np.float64)
    if lm.shape != (478, 3):
        raise ValueError(f"portrait landmarks must be MediaPipe's [478,3] pixels, got {lm.shape}")
    r_axes = axis_rotation(up, front)
    oriented = mesh.detach().to("cpu").with_(vertices=mesh.vertices.detach().float().cpu() @ r_axes.T)
    found = find_mesh_landmarks(oriented, up, front, resolution, model_path, backend, device)
    s, rot, t, report = fit_similarity_to_portrait(found.points, found.valid, lm, camera)
    log = found.log
    cam = camera.first()
    for k in range(refine_passes):
        # analysis by synthesis: MediaPipe puts some landmarks where the view decides (the face oval on the
        # silhouette, the eyes' and lips' contours of a turned face), so the mesh's landmarks are found again
        # on the placed mesh seen by the reference camera itself -- the view the portrait's were found in
        placed_v = s * oriented.vertices @ rot.T + t
        again = _lift_from_view(oriented.with_(vertices=placed_v), cam.to("cpu"), model_path, backend, device)
        if again is None:
            # the placed mesh seen by the camera the portrait's face was found in shows no face: the landmarks the
            # first pass fitted were found on a mis-turned head (a detector can see a face in a head lying on its
            # back), so the placement is wrong, however well those points fit
            raise RuntimeError(f"placing the head mesh failed: the placed mesh, rendered from the portrait's camera, shows "
                               f"no face ({log}); " + _no_face_message(up, front, "placed"))
        pts_world, valid = again
        pts = ((pts_world - t) @ rot) / s  # back into the oriented mesh's frame
        s2, rot2, t2, report2 = fit_similarity_to_portrait(pts, valid, lm, camera)
        if report2["mean_px"] > report["mean_px"]:
            log += f"; pass {k + 2} from the reference view did not improve ({report2['mean_px']:.1f} px): kept pass {k + 1}"
            break
        s, rot, t, report = s2, rot2, t2, report2
        log += f"; pass {k + 2}: landmarks found again from the reference view"
    placement = MeshPlacement(s, rot @ r_axes, t, dict(report, detector=log))
    placed = oriented.with_(vertices=mesh.vertices.detach().float().cpu() @ placement.rotation.T * s + t)
    if not (math.isfinite(s) and s > 0 and bool(torch.isfinite(placed.vertices).all())):
        raise RuntimeError(f"placing the head mesh failed (scale {s}): the landmarks found on the mesh do not fit the "
                           f"portrait's ({found.log}); check the mesh's up_axis / front_axis")
    return placed, placement


# -------------------------------------------------------------------------------------------- views
@torch.no_grad()
def render_mesh_views(mesh: HeadMesh, cameras: Cameras, batch: int = 8, device: torch.device | str = "cpu",
                      backend: Optional[str] = None, interrupt: Optional[InterruptFn] = None) -> GanViews:
    """``GanViews`` of a mesh: world normals facing the camera (0 off the mask), 0/1 masks (largest
    connected component, as PanoHead's views), and colours when the mesh has a texture or vertex colours."""
    from ..render import render_mesh

    m = mesh.to(device)
    tex = m.texture if (m.has_uv and m.texture is not None) else None
    normals, masks, colors = [], [], []
    for i in range(0, len(cameras), batch):
        if interrupt is not None:
            interrupt()
        cams = cameras[list(range(i, min(i + batch, len(cameras))))].to(device)
        out = render_mesh(m.vertices, m.faces, cams, vertex_colors=None if tex is not None else m.vertex_colors,
                          uvs=m.uvs if tex is not None else None, uv_faces=m.uv_faces if tex is not None else None,
                          texture=tex, antialias=False, backend=backend)
        _, d = cams.rays()
        n = out.normal_world
        n = torch.where(((n * d).sum(-1, keepdim=True) > 0), -n, n)  # a visible surface faces the camera
        for k in range(len(cams)):
            mk = torch.from_numpy(_largest_cc_mask(out.coverage[k, ..., 0].cpu().numpy() > 0.5))[..., None]
            masks.append(mk)
            normals.append(n[k].cpu() * mk)
            if out.color is not None:
                colors.append(out.color[k].cpu() * mk)
    return GanViews(cameras.to("cpu"), torch.stack(normals), torch.stack(masks), torch.stack(colors) if colors else None)


def mesh_stage1_views(mesh: HeadMesh, n_views: int = 40, view_resolution: int = 256, device: torch.device | str = "cpu",
                      interrupt: Optional[InterruptFn] = None) -> GanViews:
    """The stage-A targets of a placed mesh: its renders from the GAN-view cameras."""
    return render_mesh_views(mesh, gan_view_cameras(n_views=n_views, resolution=view_resolution), device=device,
                             interrupt=interrupt)


def run_stage1_mesh(aligned, mesh: HeadMesh, up: str = "+y", front: str = "+z", view_resolution: int = 256,
                    n_views: int = 40, model_path: Optional[str] = None, device: torch.device | str = "cpu",
                    interrupt: Optional[InterruptFn] = None):
    """Stage 1 from a given head mesh: an ``AlignedPortrait`` (``align.align_portrait``) and any mesh ->
    ``Stage1Result`` with ``init="mesh"`` (the placed mesh, the portrait's camera, the crop, its views)."""
    from .pipeline import Stage1Result

    cam = aligned.cameras
    if interrupt is not None:  # before the placement (landmark renders and fits: seconds), not after it
        interrupt()
    placed, placement = place_mesh(mesh, aligned.landmarks, cam, up, front, model_path=model_path, device=device)
    views = mesh_stage1_views(placed, n_views, view_resolution, device=device, interrupt=interrupt)
    rep = placement.report
    info = (f"init=mesh: placed by {rep['landmarks_used']} face landmarks, scale {placement.scale:.4g}, translation "
            f"{tuple(round(float(v), 3) for v in placement.translation)}; landmark reprojection in the reference view "
            f"mean {rep['mean_px']:.1f} px, eye/nose/mouth keypoints {rep['keypoint_mean_px']:.1f} px (at {cam.height} px: "
            f"the rest is the mesh's face shape, not the portrait's); {rep['detector']}; mesh {placed.vertices.shape[0]} "
            f"vertices; pose yaw/pitch/roll {tuple(round(a, 1) for a in aligned.yaw_pitch_roll)}")
    image = torch.from_numpy(aligned.image.astype(np.float32) / 255.0)[None]
    return Stage1Result(placed, cam, image, views, "mesh", aligned.landmarks, info=info)
