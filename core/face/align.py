"""Placing the portrait's 478 MediaPipe landmarks on the head mesh (ID-Sculpt preprocessing).

The authors' recipe (``preprocess/PanoHead/pre_align_3Dlm.py``): take 7 keypoints of the portrait
(eye corners, nose tip, mouth corners), cast rays through them from the reference camera onto the
head mesh to get their 3D positions, fit a similarity transform (scale, rotation, translation;
RANSAC over SVD fits) that maps MediaPipe's own 3D landmark coordinates onto those points, and
apply it to all 478 landmarks.

One refinement of ours (``refine="ray"``, default): MediaPipe's (x, y) are image positions under a
weak-perspective model, while the reference camera is a true perspective camera, so a pure
similarity leaves off-centre landmarks several pixels away from where the portrait shows them
(~10 px at 512 px for a face filling the frame), and off the surface. So every landmark is put on
its reference-camera ray: landmarks the portrait shows are snapped to the first mesh surface along
that ray (where the portrait saw them); landmarks the face hides in the portrait (the far cheek of a
3/4 view: found by z-buffering MediaPipe's own face mesh, whose triangles are the 3-cliques of its
tesselation edges, or by a similarity depth far behind the first surface) keep the similarity's
depth, never in front of the visible surface. The landmarks then re-project exactly onto the portrait and lie on the surface,
which makes the occlusion test of other views reliable. ``refine="none"`` gives the authors' pure
similarity.

Ray casting (core/face/raycast.py) and the similarity fits (core/face/similarity.py) have their own modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..camera import Cameras
from ..mesh import HeadMesh, decimate
from .landmark_image import camera_azimuth, draw_landmark_images
from .landmarks import KEYPOINTS_7, FaceLandmarks2D, mesh_triangles, self_occluded
from .raycast import pixel_rays, raycast
from .similarity import ransac_similarity

#: faces kept for the landmarks' occlusion test (the head decimated to this; see align_landmarks_to_mesh)
OCCLUDER_MAX_FACES = 50_000
_CHUNK_ELEMENTS = 4_000_000  # points x vertices per distance chunk: bounds the temporary memory (~16 MB)


# ---------------------------------------------------------------------------------------------
# 3D landmarks
# ---------------------------------------------------------------------------------------------
@dataclass
class FaceLandmarks3D:
    """The 478 landmarks placed on the head, in the mesh (world) frame.

    points: [478,3]; normals: [478,3] unit surface normals (interpolated at the reference-ray hit,
    else of the nearest vertex) used to skip landmarks on surfaces turned away from a camera; mesh_vertices/mesh_faces: the mesh used
    for the occlusion test (optional); reference_camera: the portrait's camera; fit: alignment
    diagnostics; connections: MediaPipe connection lists (carried, so drawing needs no mediapipe);
    portrait_landmarks: the 2D landmarks of the portrait they came from (face-mask fallback).
    """

    points: torch.Tensor
    connections: dict[str, Any]
    normals: torch.Tensor | None = None
    mesh_vertices: torch.Tensor | None = None
    mesh_faces: torch.Tensor | None = None
    reference_camera: Cameras | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    portrait_landmarks: FaceLandmarks2D | None = None  # the 2D detection this came from
    #: draw()'s default: False = all contours on front/side views (the authors'); True = hide occluded ones
    occlusion: bool = False
    # the occluder (vertices, faces, tolerance, centre) on each device it was used on (see _occluder)
    _occluder_on: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def to(self, device: torch.device | str) -> "FaceLandmarks3D":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FaceLandmarks3D(self.points.to(device), self.connections, mv(self.normals), mv(self.mesh_vertices),
                               mv(self.mesh_faces), None if self.reference_camera is None else self.reference_camera.to(device),
                               dict(self.fit), self.log, self.portrait_landmarks, self.occlusion)

    def project(self, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel positions [B,478,2] and camera-frame depths [B,478]."""
        pts = self.points.to(cameras.device)
        return cameras.project(pts), cameras.to_camera(pts)[..., 2]

    def _occluder(self, device: torch.device, mesh: HeadMesh | None) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor] | None:
        """(vertices, faces, default tolerance, bounding-box centre) of the occluder on ``device``: ``mesh``, else
        the stored mesh, cached per device (ISD draws landmarks every guidance step on the GPU, and copying the
        mesh there or reducing it and reading the result back each time cost more than the test itself)."""
        if mesh is not None:
            v = mesh.vertices.detach()
            return v.to(device), mesh.faces.to(device), _tolerance(v), _centre(v)
        if self.mesh_vertices is None or self.mesh_faces is None:
            return None
        key = str(device)
        if key not in self._occluder_on:
            v = self.mesh_vertices.detach()
            self._occluder_on[key] = (v.to(device), self.mesh_faces.to(device), _tolerance(v), _centre(v).to(device))
        return self._occluder_on[key]

    def visibility(
        self, cameras: Cameras, mesh: HeadMesh | None = None, occlusion: bool = True, tolerance: float | None = None,
        method: str = "auto",
    ) -> torch.Tensor:
        """[B,478] bool: in front of the camera, on a surface facing it, and not hidden by the mesh.

        A landmark is hidden when the first surface on the ray from the camera to it lies nearer than
        the landmark by more than ``tolerance`` (default 2% of the mesh's bounding-box diagonal).
        method "ray" casts that ray (exact; host syncs); "zbuffer" reads the occluder's depth at the
        landmark's pixel (the ray through the pixel centre, within a pixel of the landmark's ray) from
        one rasterisation per view, with no host sync; "auto" = zbuffer where nvdiffrast renders
        (CUDA), else ray.
        """
        if method not in ("auto", "ray", "zbuffer"):
            raise ValueError(f"landmark visibility method must be 'auto', 'ray' or 'zbuffer', got {method!r}")
        dev = cameras.device
        pts = self.points.to(dev)
        depth = cameras.to_camera(pts)[..., 2]
        vis = depth > 1e-4
        to_cam = cameras.position[:, None] - pts[None]
        if self.normals is not None:
            vis &= (self.normals.to(dev)[None] * to_cam).sum(-1) > 0
        occ = self._occluder(dev, mesh) if occlusion else None
        if occ is None:
            return vis
        verts, faces, tol, _ = occ
        tol = tolerance if tolerance is not None else tol
        if method == "auto":
            from ..render import get_backend

            method = "zbuffer" if get_backend(None, dev).name == "nvdiffrast" else "ray"
        if method == "zbuffer":
            return vis & ~_zbuffer_hidden(cameras, cameras.project(pts), depth, to_cam.norm(dim=-1), verts, faces, tol)
        for b in range(len(cameras)):
            o = cameras.position[b][None].expand_as(pts)
            d = pts - o  # t = 1 at the landmark
            t, _, _ = raycast(o, d, verts, faces)
            dist = d.norm(dim=-1)
            vis[b] &= t * dist >= dist - tol
        return vis

    def draw(self, cameras: Cameras, mesh: HeadMesh | None = None, occlusion: bool | None = None, method: str = "auto") -> torch.Tensor:
        """Landmark images [B,H,W,3] (0..1) for the MediaPipe-face ControlNet, one per camera.

        As ID-Sculpt draws them (``threestudio/utils/draw_laion.py``): front and side views
        (|azimuth| <= 90 degrees) show every contour of the 478 points, hidden or not, because the
        ControlNet was trained on complete MediaPipe meshes; views from behind show only the face
        oval (where the face is turned). ``occlusion=True`` (not the authors') draws on front/side
        views only the landmarks on surfaces facing the camera and not hidden by the mesh (``method``:
        see ``visibility``); None = the ``occlusion`` field (False unless set). Landmarks behind the
        camera plane are never drawn.
        """
        return self.draw_async(cameras, mesh, occlusion, method).result()

    def draw_async(self, cameras: Cameras, mesh: HeadMesh | None = None, occlusion: bool | None = None,
                   method: str = "auto") -> "PendingLandmarkImages":
        """``draw``, started: the projection and visibility are queued on the cameras' device and copied
        to the host without waiting; ``.result()`` draws (OpenCV, on the CPU) once the copy has landed.
        Started before a render, the GPU keeps working while the CPU draws."""
        px, depth = self.project(cameras)
        stored = self._occluder(cameras.device, None) if mesh is None else None  # cached: no per-step reduction
        verts = mesh.vertices.detach() if mesh is not None else self.mesh_vertices
        centre = stored[3] if stored is not None else (None if verts is None else _centre(verts))
        az = camera_azimuth(cameras.cam2world, centre)
        if self.occlusion if occlusion is None else occlusion:
            vis = self.visibility(cameras, mesh=mesh, occlusion=True, method=method)
        else:  # the authors' drawing: no facing or hidden-surface test, only points in front of the camera
            vis = depth > 1e-4
        back = az.abs() > 90.0 + 1e-3
        vis = torch.where(back[:, None], torch.ones_like(vis), vis)
        return PendingLandmarkImages(px, vis, az, cameras.height, cameras.width, self.connections)


def _tolerance(v: torch.Tensor) -> float:
    """The occlusion test's default tolerance: 2 % of the bounding-box diagonal."""
    return 0.02 * float((v.max(0).values - v.min(0).values).norm())


def _centre(v: torch.Tensor) -> torch.Tensor:
    """The bounding-box centre [3] (the azimuths of the landmark images are measured around it)."""
    return (v.min(0).values + v.max(0).values) / 2


class PendingLandmarkImages:
    """Landmark images being prepared (``FaceLandmarks3D.draw_async``); ``result()`` -> [B,H,W,3] 0..1."""

    def __init__(self, px: torch.Tensor, vis: torch.Tensor, az: torch.Tensor, height: int, width: int, connections: dict[str, Any]):
        self.size, self.connections = (height, width), connections
        self._event = None
        if px.is_cuda:  # pinned host buffers + an event: the copies land without a host sync
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (px, vis, az)]
            for h, t in zip(host, (px, vis, az)):
                h.copy_(t, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(px.device))
            px, vis, az = host
        self._host = (px, vis, az)
        self._images: torch.Tensor | None = None

    def result(self) -> torch.Tensor:
        if self._images is None:
            if self._event is not None:
                self._event.synchronize()
            px, vis, az = self._host
            self._images = draw_landmark_images(px, vis, az, self.size[0], self.size[1], self.connections)
        return self._images


def _zbuffer_hidden(cameras: Cameras, px: torch.Tensor, depth: torch.Tensor, dist: torch.Tensor, verts: torch.Tensor,
                    faces: torch.Tensor, tol: float) -> torch.Tensor:
    """[B,P] bool: the occluder's surface at each point's pixel is nearer than the point by more than ``tol``.

    px [B,P,2] pixel positions, depth [B,P] camera z, dist [B,P] distance to the camera. Along one ray
    the distance is z·dist/depth, so "hit distance < dist − tol" is "hit z < depth − tol·depth/dist".
    """
    from ..render import render_mesh

    with torch.no_grad():
        zbuf = render_mesh(verts, faces, cameras, antialias=False, check_inputs=False).depth[..., 0]  # [B,H,W], 0 = none
    h, w = zbuf.shape[1:]
    ix, iy = px[..., 0].floor().long(), px[..., 1].floor().long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    b = torch.arange(zbuf.shape[0], device=zbuf.device)[:, None].expand_as(ix)
    z = zbuf[b, iy.clamp(0, h - 1), ix.clamp(0, w - 1)]
    return inside & (z > 0) & (z < depth - tol * depth / dist.clamp_min(1e-12))


def _nearest_vertex_normals(points: torch.Tensor, mesh: HeadMesh) -> torch.Tensor:
    vn = mesh.vertex_normals().detach().cpu()
    v = mesh.vertices.detach().float().cpu()
    best_d = torch.full((points.shape[0],), math.inf)
    best_i = torch.zeros(points.shape[0], dtype=torch.long)
    step = max(1, _CHUNK_ELEMENTS // max(1, points.shape[0]))
    for s in range(0, v.shape[0], step):
        dmin, imin = torch.cdist(points, v[s : s + step]).min(dim=1)
        better = dmin < best_d
        best_d = torch.where(better, dmin, best_d)
        best_i = torch.where(better, imin + s, best_i)
    return vn[best_i]


def align_landmarks_to_mesh(
    landmarks: FaceLandmarks2D,
    mesh: HeadMesh,
    reference_camera: Cameras,
    refine: str = "ray",
    keypoints: tuple[int, ...] = KEYPOINTS_7,
    hidden_depth_tolerance: float = 0.1,
) -> FaceLandmarks3D:
    """Place the portrait's landmarks on the head mesh (see module docstring).

    The portrait must be the reference view: its normalised landmark positions are read as
    positions in the reference camera's image (any resolution). hidden_depth_tolerance: a landmark whose similarity depth lies more than this fraction
    of the face width behind the first surface on its ray counts as hidden in the portrait.
    """
    if len(reference_camera) != 1:
        raise ValueError(f"align_landmarks_to_mesh needs one reference camera, got {len(reference_camera)}")
    if refine not in ("ray", "none"):
        raise ValueError(f"refine must be 'ray' or 'none', got {refine!r}")
    cam = reference_camera.to("cpu")
    verts = mesh.vertices.detach().float().cpu()
    faces = mesh.faces.cpu()
    norm = landmarks.normalized.float()
    w, h = cam.width, cam.height
    # MediaPipe's 3D points in a pixel frame of the camera's image: x right, y down, z away.
    src_all = norm * torch.tensor([w, h, w], dtype=torch.float32)
    px_all = src_all[:, :2]
    kp = list(keypoints)
    o, d = pixel_rays(cam, px_all[kp][None])
    t, tri, _ = raycast(o[0], d[0], verts, faces)
    hit = torch.isfinite(t)
    names = ["right eye outer", "right eye inner", "left eye inner", "left eye outer", "nose tip", "mouth right", "mouth left"]
    if int(hit.sum()) < 3:
        missed = [names[i] if i < len(names) else str(kp[i]) for i in range(len(kp)) if not hit[i]]
        raise RuntimeError(
            f"Only {int(hit.sum())} of {len(kp)} face keypoints hit the head mesh from the reference camera "
            f"(missed: {', '.join(missed)}). The portrait, the mesh and the reference camera must belong together: "
            f"use the aligned portrait and the camera/mesh from the same PanoHead inversion."
        )
    dst = o[0][hit] + d[0][hit] * t[hit][:, None]
    src = src_all[kp][hit]
    spread = float((dst - dst.mean(0)).norm(dim=1).mean())
    s, rot, tr, inl_sub = ransac_similarity(src, dst, threshold=max(0.15 * spread, 1e-4))
    pts = s * src_all @ rot.T + tr  # similarity-aligned, [478,3] world
    inliers = torch.zeros(len(kp), dtype=torch.bool)
    inliers[hit.nonzero()[:, 0][inl_sub]] = True
    kp_res = (s * src @ rot.T + tr - dst).norm(dim=1)
    snapped = torch.zeros(pts.shape[0], dtype=torch.bool)
    hidden = torch.zeros(pts.shape[0], dtype=torch.bool)
    if refine == "ray":
        # Which landmarks does the face itself hide in the portrait (e.g. the far cheek of a 3/4
        # view)? Those keep the similarity depth; every landmark the portrait shows lies on the
        # first surface along its reference ray, so it is snapped there.
        if "tesselation" in landmarks.connections:
            face_w = float(src_all[:, 0].max() - src_all[:, 0].min())
            hidden = self_occluded(src_all, mesh_triangles(landmarks.connections), eps=0.03 * face_w)
        z = cam.to_camera(pts)[0, :, 2]
        ro, rd = pixel_rays(cam, px_all[None])
        ts, tri_s, bary_s = raycast(ro[0], rd[0], verts, faces)
        hit_all = torch.isfinite(ts)
        # The landmark mesh is coarse (a cheek point just behind the nose slips through its
        # z-buffer): a landmark whose similarity depth lies far behind the first surface on its ray
        # is hidden too. "Far" is relative to the face: on the synthetic head visible landmarks stay
        # within 2.5% of the face width, hidden ones mostly lie 5-40% behind.
        face_w3d = s * float(src_all[:, 0].max() - src_all[:, 0].min())
        hidden = hidden | (hit_all & (z - ts > hidden_depth_tolerance * face_w3d))
        snapped = hit_all & ~hidden
        # hidden landmarks stay behind (never in front of) the visible surface
        z = torch.where(hidden & hit_all, torch.maximum(z, ts), z)
        pts = torch.where(snapped[:, None], ro[0] + rd[0] * ts.nan_to_num(posinf=0.0)[:, None], ro[0] + rd[0] * z[:, None])
    if not torch.isfinite(pts).all():
        raise RuntimeError("landmark alignment produced non-finite points; check the mesh and the reference camera")
    normals = torch.zeros_like(pts)
    if bool(snapped.any()):  # on the surface: the interpolated vertex normal at the hit
        vn = mesh.vertex_normals().detach().cpu()[faces[tri_s[snapped]]]  # [S,3,3]
        b = bary_s[snapped]
        normals[snapped] = torch.nn.functional.normalize(
            (1 - b.sum(-1, keepdim=True)) * vn[:, 0] + b[:, :1] * vn[:, 1] + b[:, 1:] * vn[:, 2], dim=-1)
    if bool((~snapped).any()):
        normals[~snapped] = _nearest_vertex_normals(pts[~snapped], mesh)
    rms = float(kp_res[inl_sub].pow(2).mean().sqrt())
    fit = {
        "scale": s,
        "rotation": rot,
        "translation": tr,
        "keypoints_hit": int(hit.sum()),
        "keypoint_inliers": inliers,
        "keypoint_rms": rms,
        "keypoint_rms_relative": rms / max(spread, 1e-12),
        "snapped": int(snapped.sum()),
        "hidden_in_portrait": int(hidden.sum()),
        "refine": refine,
    }
    msg = (
        f"landmarks aligned to the mesh: {int(hit.sum())}/{len(kp)} keypoints hit, {int(inl_sub.sum())} inliers, "
        f"keypoint RMS {rms:.4f} ({100 * fit['keypoint_rms_relative']:.1f}% of the keypoint spread); "
        f"{int(snapped.sum())}/{pts.shape[0]} landmarks snapped to the surface, {int(hidden.sum())} hidden in the portrait"
    )
    # the occlusion test only needs the head's shape, within its tolerance (2% of the head's size): a
    # PanoHead mesh has ~2 M faces, and the test runs at every ISD step
    occluder = decimate(HeadMesh(verts, faces), OCCLUDER_MAX_FACES)
    return FaceLandmarks3D(points=pts, connections=landmarks.connections, normals=normals, mesh_vertices=occluder.vertices,
                           mesh_faces=occluder.faces, reference_camera=cam, fit=fit, log=msg, portrait_landmarks=landmarks)
