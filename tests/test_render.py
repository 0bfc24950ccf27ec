"""Known-answer tests of core.render on both backends (nvdiffrast ones skip without CUDA)."""
from __future__ import annotations

import math

import pytest
import torch
import trimesh

from torch_threads import one_thread  # noqa: F401  (autouse: this module runs single-threaded)
from idsculpt.core.camera import Cameras
from idsculpt.core.render import get_backend, render_mesh, vertex_normals


def _sphere(subdiv: int = 4, radius: float = 1.0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    s = trimesh.creation.icosphere(subdivisions=subdiv, radius=radius)
    return torch.tensor(s.vertices, dtype=torch.float32, device=device), torch.tensor(s.faces, dtype=torch.int64, device=device)


def _proj_radius(cams: Cameras, dist: float, r: float) -> float:
    """Image-plane radius (pixels) of a sphere's silhouette: f * tan(asin(r / d))."""
    return float(cams.focal_pixels()[0]) * r / math.sqrt(dist * dist - r * r)


def _pixel_grid(h: int, w: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device) + 0.5, torch.arange(w, device=device) + 0.5, indexing="ij")
    return xs, ys


def _nvdiffrast_or_skip() -> str:
    if not torch.cuda.is_available():
        pytest.skip("nvdiffrast backend test needs CUDA (torch.cuda.is_available() is False)")
    try:
        get_backend("nvdiffrast", "cuda")
    except RuntimeError as e:
        pytest.skip(f"nvdiffrast not usable here: {e}")
    return "cuda"


# ------------------------------------------------------------------------------ shared checks
def check_sphere(backend: str, device: str, res: int = 128) -> None:
    dist, r = 3.0, 1.0
    v, f = _sphere(4, r, device)
    cams = Cameras.orbit(0.0, 0.0, dist, 40.0, res).to(device)
    out = render_mesh(v, f, cams, backend=backend)
    rp = _proj_radius(cams, dist, r)
    # Area: antialiased coverage sums to the disc area (inscribed polyhedron: a hair smaller).
    area = float(out.mask.sum())
    assert abs(area - math.pi * rp * rp) / (math.pi * rp * rp) < 0.01, (area, math.pi * rp * rp)
    # Silhouette is the circle: inside r-1.5 px all covered, outside r+1.5 px none.
    xs, ys = _pixel_grid(res, res, device)
    rad = torch.sqrt((xs - res / 2) ** 2 + (ys - res / 2) ** 2)
    m = out.mask[0, ..., 0]
    assert bool((m[rad < rp - 1.5] > 0.999).all())
    assert bool((m[rad > rp + 1.5] == 0).all())
    # Depth at the centre is distance - radius.
    c = res // 2
    assert abs(float(out.depth[0, c, c, 0]) - (dist - r)) < 5e-3
    assert float(out.depth[0, 0, 0, 0]) == 0.0
    # Disparity: 1 at the nearest point (centre), decreasing to the rim, 0 on background.
    assert float(out.disparity[0, c - 1 : c + 1, c - 1 : c + 1].max()) > 0.99
    assert float(out.disparity[0, 0, 0, 0]) == 0.0
    # World normals of a sphere are its normalised positions: compare with the ray hit points.
    o, d = cams.rays()
    oc = (o * d).sum(-1)
    disc = oc * oc - ((o * o).sum(-1) - r * r)
    t = -oc - torch.sqrt(disc.clamp_min(0))
    hit = torch.nn.functional.normalize(o + t[..., None] * d, dim=-1)
    interior = rad < rp - 2
    cos = (out.normal_world[0] * hit[0]).sum(-1)[interior]
    assert float(cos.min()) > 0.995
    # View normals: facing the camera at the centre, +x on the image's right, +y at the top.
    nv = out.normal_view[0]
    assert torch.allclose(nv[c, c], torch.tensor([0.0, 0.0, 1.0], device=device), atol=0.03)
    right = nv[c, c + int(rp * 0.7)]
    top = nv[c - int(rp * 0.7), c]
    assert float(right[0]) > 0.5 and abs(float(right[1])) < 0.05
    assert float(top[1]) > 0.5 and abs(float(top[0])) < 0.05
    # Normal image: (0.5, 0.5, 1) on background and at the centre.
    img = out.normal_image()
    assert torch.allclose(img[0, 0, 0], torch.tensor([0.5, 0.5, 1.0], device=device))
    assert torch.allclose(img[0, c, c], torch.tensor([0.5, 0.5, 1.0], device=device), atol=0.02)
    assert out.face_id[0, 0, 0] == -1 and out.face_id[0, c, c] >= 0


def check_textured_quad(backend: str, device: str) -> None:
    """A quad filling the view exactly, texture at image resolution: lookups hit texel centres."""
    res, dist = 32, 2.0
    fov = math.degrees(2 * math.atan(1.0 / dist))
    cams = Cameras.orbit(0.0, 0.0, dist, fov, res).to(device)
    v = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32, device=device)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], device=device)
    uvs = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float32, device=device)
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(res, res, 3, generator=g).to(device).requires_grad_(True)
    out = render_mesh(v, f, cams, uvs=uvs, uv_faces=f, texture=tex, backend=backend)
    assert bool((out.face_id >= 0).all())
    # uv at pixel (i, j) is ((j + .5) / W, 1 - (i + .5) / H): v up, row 0 at the top.
    xs, ys = _pixel_grid(res, res, device)
    assert torch.allclose(out.uv[0, ..., 0], xs / res, atol=1e-4)
    assert torch.allclose(out.uv[0, ..., 1], 1 - ys / res, atol=1e-4)
    assert torch.allclose(out.color[0], tex.detach(), atol=1e-4)
    # bottom-left pixel shows the bottom-left texel
    assert torch.allclose(out.color[0, res - 1, 0], tex.detach()[res - 1, 0], atol=1e-4)
    # gradient to the texture lands on the looked-up texel
    out.color[0, 5, 7, 1].backward()
    assert abs(float(tex.grad[5, 7, 1]) - 1.0) < 1e-3
    assert float(tex.grad.abs().sum()) == pytest.approx(1.0, abs=1e-3)


def _disc(n: int, radius: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat regular n-gon in the plane z = 0 facing +z (a triangle fan around the centre)."""
    ang = torch.arange(n, dtype=torch.float32) * (2 * math.pi / n)
    ring = torch.stack([radius * torch.cos(ang), radius * torch.sin(ang), torch.zeros(n)], 1)
    v = torch.cat([torch.zeros(1, 3), ring]).to(device)
    i = torch.arange(n)
    f = torch.stack([torch.zeros(n, dtype=torch.long), 1 + i, 1 + (i + 1) % n], 1).to(device)
    return v, f


def check_disc_silhouette_gradient(backend, device: str, n: int = 64) -> None:
    """Mask area and d(area)/d(scale) of a camera-facing n-gon: A = n/2 sin(2 pi/n) (f r/d)^2, dA/ds = 2A.

    The rim of a flat fan is all boundary (silhouette) edges. With n = 64 the rim pixels next to the
    fan's vertices are covered by a triangle whose exit edge is an interior (radial) edge:
    nvdiffrast's rule drops those pairs (about 10 % of the derivative here); the torch backend walks
    across them to the rim. With n = 4 (a square) nothing is dropped by either rule.
    """
    r, dist, res = 0.8, 3.0, 96
    v, f = _disc(n, r, device)
    if n == 4:  # turn the square off the pixel axes
        a = math.radians(20)
        rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]], device=device)
        v = v @ rot.T
    cams = Cameras.orbit(0.0, 0.0, dist, 40.0, res).to(device)
    s = torch.tensor(1.0, device=device, requires_grad=True)
    mask = render_mesh(v * s, f, cams, backend=backend).mask
    mask.sum().backward()
    rp = float(cams.focal_pixels()[0]) * r / dist
    area = 0.5 * n * math.sin(2 * math.pi / n) * rp * rp
    assert float(mask.detach().sum()) == pytest.approx(area, rel=0.005)
    assert float(s.grad) == pytest.approx(2 * area, rel=0.03)


# ------------------------------------------------------------------------------ torch backend
def test_disc_silhouette_gradient_torch() -> None:
    check_disc_silhouette_gradient("torch", "cpu")
    check_disc_silhouette_gradient("torch", "cpu", n=4)
    # also with nvdiffrast's pure topological silhouette rule (exact for the square)
    from idsculpt.core.render.torch_backend import TorchBackend

    check_disc_silhouette_gradient(TorchBackend("cpu", background_silhouettes=False, walk_steps=0), "cpu", n=4)


# ------------------------------------------------------------------------------ torch backend
def test_sphere_known_answers_torch() -> None:
    check_sphere("torch", "cpu")


def test_textured_quad_uv_lookup_torch() -> None:
    check_textured_quad("torch", "cpu")


def test_texture_bilinear_and_v_up() -> None:
    be = get_backend("torch")
    tex = torch.arange(2 * 4, dtype=torch.float32).reshape(1, 2, 4, 1)  # rows: [0..3] top, [4..7] bottom
    uv = torch.tensor([[0.125, 0.75], [0.125, 0.25], [0.25, 0.25], [0.25, 0.5]]).reshape(1, 1, 4, 2)
    got = be.texture(tex, uv, boundary_mode="clamp")[0, 0, :, 0]
    # (0.125,0.75): top-left texel centre = 0; (0.125,0.25): bottom-left = 4;
    # (0.25,0.25): halfway between texels 4 and 5; (0.25,0.5): middle of 0,1,4,5
    assert torch.allclose(got, torch.tensor([0.0, 4.0, 4.5, 2.5]))
    wrapped = be.texture(tex, torch.tensor([[[[0.0, 0.75]]]]), boundary_mode="wrap")
    assert float(wrapped) == pytest.approx(1.5)  # halfway between texel 3 (wrapped) and texel 0


def test_perspective_correct_depth_on_tilted_plane() -> None:
    """Interpolating camera z must give the exact ray-plane depth (affine in 3D, not in screen)."""
    res = 48
    cams = Cameras.orbit(0.0, 0.0, 3.0, 50.0, res)
    # a plane tilted 60 degrees about the y axis, filling the view
    ang = math.radians(60)
    axis_u = torch.tensor([math.cos(ang), 0.0, -math.sin(ang)]) * 2.5
    axis_v = torch.tensor([0.0, 1.0, 0.0]) * 4
    v = torch.stack([-axis_u - axis_v, axis_u - axis_v, axis_u + axis_v, -axis_u + axis_v])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    out = render_mesh(v, f, cams, backend="torch", antialias=False)
    o, d = cams.rays()
    n = torch.tensor([math.sin(ang), 0.0, math.cos(ang)])
    t = -(o[0] @ n) / (d[0] @ n)
    cam_z = t * (d[0] @ (-cams.position[0] / cams.position[0].norm()))
    covered = out.face_id[0] >= 0
    assert covered.float().mean() > 0.6
    assert torch.allclose(out.depth[0, ..., 0][covered], cam_z[covered], atol=1e-4)


def test_rasterize_nvdiffrast_layout_and_barycentrics() -> None:
    be = get_backend("torch")
    pos = torch.tensor([[[-1.0, -1.0, 0.5, 1.0], [1.0, -1.0, 0.5, 1.0], [-1.0, 1.0, -0.5, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast = be.rasterize(pos, tri, (4, 4))
    assert rast.shape == (1, 4, 4, 4)
    # top-left pixel (row 0 = clip y = -1) is inside, bottom-right is background
    assert float(rast[0, 0, 0, 3]) == 1.0 and torch.equal(rast[0, 3, 3], torch.zeros(4))
    # pixel (0,0) centre is clip (-0.75, -0.75) = 0.75 v0 + 0.125 v1 + 0.125 v2
    u, v, zw = rast[0, 0, 0, :3].tolist()
    assert (u, v, zw) == pytest.approx((0.75, 0.125, 0.75 * 0.5 + 0.125 * 0.5 - 0.125 * 0.5))
    # the interpolated clip position at a pixel equals the pixel centre
    attr, _ = be.interpolate(pos[0, :, :2], rast, tri)
    assert attr[0, 0, 0].tolist() == pytest.approx([-0.75, -0.75])
    assert attr[0, 1, 2].tolist() == pytest.approx([0.25, -0.25])


def _ray_cast(o: torch.Tensor, d: torch.Tensor, v: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference visibility: nearest ray-triangle hit (Moller-Trumbore), (t, face id or -1) per ray."""
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e1, e2 = p1 - p0, p2 - p0  # [M,3]
    pvec = torch.cross(d[:, None, :].expand(-1, f.shape[0], -1), e2[None].expand(d.shape[0], -1, -1), dim=-1)
    det = (e1[None] * pvec).sum(-1)
    tvec = o[:, None, :] - p0[None]
    u = (tvec * pvec).sum(-1) / det
    qvec = torch.cross(tvec, e1[None].expand_as(tvec), dim=-1)
    vv = (d[:, None, :] * qvec).sum(-1) / det
    t = (e2[None] * qvec).sum(-1) / det
    hit = (det.abs() > 1e-12) & (u >= 0) & (vv >= 0) & (u + vv <= 1) & (t > 0)
    t = torch.where(hit, t, torch.full_like(t, float("inf")))
    tmin, idx = t.min(dim=1)
    return tmin, torch.where(torch.isfinite(tmin), idx, torch.full_like(idx, -1))


def test_visibility_and_depth_match_ray_casting() -> None:
    """The z-buffer picks the same nearest triangle as ray casting on a self-occluding mesh."""
    v, f = _sphere(2)
    bump = 0.25 * torch.sin(4 * v[:, 0]) * torch.cos(3 * v[:, 1])
    v = v * (1 + bump[:, None])
    v2 = torch.cat([v, v * 0.5 + torch.tensor([0.6, 0.3, 0.9])])  # a second body partly in front
    f2 = torch.cat([f, f + v.shape[0]])
    cams = Cameras.orbit([0.0, 20.0], [10.0, 120.0], 3.0, 45.0, 40)
    out = render_mesh(v2, f2, cams, antialias=False, backend="torch")
    o, d = cams.rays()
    forward = cams.cam2world[:, :3, 2]
    for b in range(2):
        t, fid = _ray_cast(o[b].reshape(-1, 3).double(), d[b].reshape(-1, 3).double(), v2.double(), f2)
        got = out.face_id[b].reshape(-1)
        assert float((got == fid).float().mean()) > 0.995
        same = (got == fid) & (fid >= 0)
        cam_z = (t * (d[b].reshape(-1, 3).double() @ forward[b].double()))[same]
        assert torch.allclose(out.depth[b].reshape(-1)[same].double(), cam_z, atol=1e-4)


def test_rasterize_no_cracks_on_shared_diagonal() -> None:
    """Pixel centres lying exactly on a shared edge are covered (once) -- no holes."""
    be = get_backend("torch")
    pos = torch.tensor([[[-1.0, -1.0, 0, 1], [1.0, -1.0, 0, 1], [1.0, 1.0, 0, 1], [-1.0, 1.0, 0, 1]]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rast = be.rasterize(pos, tri, (64, 64))
    assert bool((rast[..., 3] > 0).all())


def test_barycentric_gradients_match_finite_differences() -> None:
    be = get_backend("torch")
    g = torch.Generator().manual_seed(1)
    base = torch.tensor([[-0.8, -0.7, 0.2, 1.0], [0.9, -0.5, 0.1, 1.4], [-0.2, 0.8, 0.3, 0.9]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    wts = torch.rand(1, 16, 16, 3, generator=g, dtype=torch.float64)

    def f(p: torch.Tensor) -> torch.Tensor:
        return (be.rasterize(p[None], tri, (16, 16))[..., :3] * wts).sum()

    assert torch.autograd.gradcheck(f, (base.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_antialias_exact_coverage_of_vertical_edge() -> None:
    """nvdiffrast's analytic AA gives exact box coverage for an edge parallel to the pixel columns."""
    be = get_backend("torch")
    res = 20
    for x_edge in (10.3, 10.7, 9.9):
        xe = 2 * x_edge / res - 1  # NDC of the edge
        pos = torch.tensor([[[-2.0, -2.0, 0, 1], [xe, -2.0, 0, 1], [xe, 2.0, 0, 1], [-2.0, 2.0, 0, 1]]], requires_grad=True)
        tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
        rast = be.rasterize(pos, tri, (res, res))
        cov = (rast[..., 3:4] > 0).float()
        aa = be.antialias(cov, rast, pos, tri)
        row = aa[0, 7, :, 0]
        expected = (x_edge - torch.arange(res, dtype=torch.float32)).clamp(0, 1)
        assert torch.allclose(row, expected, atol=1e-5), (x_edge, row)
        # d(coverage sum)/d(edge x in pixels) = number of rows: moving the edge right adds coverage
        aa.sum().backward()
        gx_pixels = float(pos.grad[0, 1, 0] + pos.grad[0, 2, 0]) * 2 / res
        assert gx_pixels == pytest.approx(res, rel=1e-3)
        # interior diagonal is not a silhouette: interior pixels untouched
        assert bool((aa[0, :, : int(x_edge) - 1] == 1).all())


def test_silhouette_gradient_matches_area_derivative() -> None:
    """d(mask area)/d(scale) of a sphere equals the analytic derivative of the projected disc area."""
    dist, r, res = 3.0, 1.0, 96
    v, f = _sphere(4, r)
    cams = Cameras.orbit(0.0, 0.0, dist, 40.0, res)
    s = torch.tensor(1.0, requires_grad=True)
    out = render_mesh(v * s, f, cams, backend="torch")
    out.mask.sum().backward()
    area = math.pi * _proj_radius(cams, dist, r) ** 2
    expected = 2 * area * dist**2 / (dist**2 - r**2)  # d/ds of pi f^2 s^2 r^2 / (d^2 - s^2 r^2)
    assert float(s.grad) == pytest.approx(expected, rel=0.05)


def test_silhouette_gradient_of_dense_mesh_at_low_resolution() -> None:
    """Rim triangles far below a pixel: walking to the silhouette keeps d(area)/d(scale) exact."""
    from idsculpt.core.render.torch_backend import TorchBackend

    dist, r = 3.0, 1.0
    v, f = _sphere(5, r)  # 20k faces: the rim ring is ~0.02 px wide at 64 px
    for res, be in ((64, "torch"), (256, TorchBackend("cpu", background_silhouettes=False))):
        cams = Cameras.orbit(0.0, 0.0, dist, 40.0, res)
        s = torch.tensor(1.0, requires_grad=True)
        render_mesh(v * s, f, cams, backend=be).mask.sum().backward()
        area = math.pi * _proj_radius(cams, dist, r) ** 2
        assert float(s.grad) == pytest.approx(2 * area * dist**2 / (dist**2 - r**2), rel=0.03), res


def test_occlusion_boundary_gradient() -> None:
    """A small red sphere in front of a big blue one: d(red area)/d(scale) through an occlusion edge."""
    vs, fs = _sphere(4, 0.4)
    vb, fb = _sphere(4, 1.0)
    centre = torch.tensor([0.0, 0.0, 1.0])
    dist_front = 3.0 - 1.0
    cams = Cameras.orbit(0.0, 0.0, 3.0, 40.0, 96)
    s = torch.tensor(1.0, requires_grad=True)
    verts = torch.cat([(vs * s) + centre, vb])
    faces = torch.cat([fs, fb + vs.shape[0]])
    colors = torch.cat([torch.tensor([1.0, 0, 0]).expand(vs.shape[0], 3), torch.tensor([0, 0, 1.0]).expand(vb.shape[0], 3)])
    out = render_mesh(verts, faces, cams, vertex_colors=colors, backend="torch")
    red = out.color[..., 0].sum()
    red.backward()
    area = math.pi * _proj_radius(cams, dist_front, 0.4) ** 2
    assert float(red.detach()) == pytest.approx(area, rel=0.01)
    assert float(s.grad) == pytest.approx(2 * area * dist_front**2 / (dist_front**2 - 0.4**2), rel=0.05)
    assert float(out.mask.detach().sum()) == pytest.approx(float(out.coverage.sum()), rel=0.01)


def test_mask_only_fit_recovers_translation() -> None:
    """A mask loss alone recovers the shift of a sphere from two views (known answer)."""
    v, f = _sphere(3, 0.8)
    cams = Cameras.orbit([0.0, 0.0], [0.0, 90.0], 3.0, 40.0, 64)  # front + side view
    shift = torch.tensor([0.15, 0.1, -0.12])
    with torch.no_grad():
        target = render_mesh(v + shift, f, cams, backend="torch").mask
    t = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([t], lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        ((render_mesh(v + t, f, cams, backend="torch").mask - target) ** 2).mean().backward()
        opt.step()
    assert torch.allclose(t.detach(), shift, atol=0.02), t


def test_mask_only_fit_moves_vertices_toward_target() -> None:
    """The DMTet use case: per-vertex offsets driven by a mask loss move the surface toward the target."""
    v, f = _sphere(3, 0.8)
    cams = Cameras.orbit([0.0, 0.0], [0.0, 90.0], 3.0, 40.0, 64)
    shift = torch.tensor([0.15, 0.1, 0.0])
    with torch.no_grad():
        target = render_mesh(v + shift, f, cams, backend="torch").mask
    disp = torch.zeros_like(v, requires_grad=True)
    opt = torch.optim.Adam([disp], lr=0.01)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((render_mesh(v + disp, f, cams, backend="torch").mask - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses
    moved = disp.detach()
    active = moved.norm(dim=-1) > 1e-3  # silhouette vertices: the only ones a mask loss can see
    mean_move = moved[active].mean(0)
    assert int(active.sum()) > 50
    assert float(mean_move[0]) > 0.03 and float(mean_move[1]) > 0.02, mean_move
    # vertices on the leading (+x) side move outward, those on the trailing (-x) side move inward
    lead = active & (v[:, 0] > 0.6)
    trail = active & (v[:, 0] < -0.6)
    assert float(moved[lead, 0].mean()) > 0 and float(moved[trail, 0].mean()) > 0


def test_gradients_flow_to_vertices_and_colors() -> None:
    v, f = _sphere(3)
    cams = Cameras.orbit(10.0, 20.0, 3.0, 40.0, 48)
    v = v.clone().requires_grad_(True)
    vc = torch.rand_like(v).requires_grad_(True)
    out = render_mesh(v, f, cams, vertex_colors=vc, backend="torch")
    (out.depth.sum() + out.normal_view[..., 2].sum() + out.color.sum() + out.disparity.sum()).backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0 and bool(torch.isfinite(v.grad).all())
    assert vc.grad is not None and float(vc.grad.abs().sum()) > 0
    # vertices behind the sphere (not visible) get no colour gradient
    back = (v.detach() @ torch.nn.functional.normalize(cams.position[0], dim=0)) < -0.5
    assert float(vc.grad[back].abs().sum()) == 0.0


def test_two_view_batch_matches_single_views() -> None:
    v, f = _sphere(3)
    cams = Cameras.orbit([0.0, 15.0], [0.0, 90.0], 3.0, 40.0, 40)
    both = render_mesh(v, f, cams, vertex_colors=(v + 1) / 2, backend="torch")
    for b in range(2):
        one = render_mesh(v, f, cams[b], vertex_colors=(v + 1) / 2, backend="torch")
        for name in ("mask", "depth", "normal_world", "normal_view", "color"):
            assert torch.allclose(getattr(both, name)[b], getattr(one, name)[0], atol=1e-5), name
    # side camera at +x, 15 degrees up: the world normal at the image centre points at the camera
    c = 20
    el = math.radians(15)
    assert torch.allclose(both.normal_world[1, c, c], torch.tensor([math.cos(el), math.sin(el), 0.0]), atol=0.05)
    assert torch.allclose(both.normal_view[1, c, c], torch.tensor([0.0, 0.0, 1.0]), atol=0.05)
    # per-view vertices: the second copy shifted right appears shifted right in the image
    vb = torch.stack([v, v + torch.tensor([0.3, 0.0, 0.0])])
    pair = render_mesh(vb, f, Cameras.orbit(0.0, 0.0, 3.0, 40.0, 40).cat([Cameras.orbit(0.0, 0.0, 3.0, 40.0, 40)] * 2), backend="torch")
    xs = torch.arange(40, dtype=torch.float32) + 0.5
    cx = [(pair.mask[b, ..., 0].sum(0) * xs).sum() / pair.mask[b].sum() for b in range(2)]
    assert float(cx[1] - cx[0]) > 2.0


def test_vertex_normals_of_sphere() -> None:
    v, f = _sphere(3)
    n = vertex_normals(v, f)
    assert float((n * torch.nn.functional.normalize(v, dim=-1)).sum(-1).min()) > 0.999
    assert vertex_normals(torch.stack([v, v * 2]), f).shape == (2, v.shape[0], 3)


def test_bad_inputs_give_clear_errors() -> None:
    v, f = _sphere(1)
    cams = Cameras.orbit(0.0, 0.0, 3.0, 40.0, 16)
    with pytest.raises(ValueError, match="only"):
        render_mesh(v, f + 1000, cams, backend="torch")
    with pytest.raises(ValueError, match="NaN"):
        render_mesh(v * float("nan"), f, cams, backend="torch")
    with pytest.raises(ValueError, match="uvs"):
        render_mesh(v, f, cams, texture=torch.rand(4, 4, 3), backend="torch")
    with pytest.raises(ValueError, match="backend"):
        render_mesh(v, f, cams, backend="opengl")
    with pytest.raises(RuntimeError, match="backend='torch'"):
        get_backend("nvdiffrast", "cpu")
    assert get_backend(None, "cpu").name == "torch"
    # an empty view: everything zero, no NaN
    out = render_mesh(v + torch.tensor([0.0, 0.0, 50.0]), f, cams, backend="torch")
    assert float(out.mask.sum()) == 0 and bool(torch.isfinite(out.disparity).all())


# ------------------------------------------------------------------------------ nvdiffrast backend
def test_sphere_known_answers_nvdiffrast() -> None:
    dev = _nvdiffrast_or_skip()
    check_sphere("nvdiffrast", dev)
    check_textured_quad("nvdiffrast", dev)


def test_nvdiffrast_silhouette_gradient() -> None:
    dev = _nvdiffrast_or_skip()
    check_disc_silhouette_gradient("nvdiffrast", dev, n=4)


def test_nvdiffrast_walk_dense_silhouette_gradient() -> None:
    """nvdiffrast rasteriser + walking antialiaser: exact silhouette gradient of a dense sphere."""
    dev = _nvdiffrast_or_skip()
    dist, r, res = 3.0, 1.0, 128
    v, f = _sphere(5, r, dev)
    cams = Cameras.orbit(0.0, 0.0, dist, 40.0, res).to(dev)
    s = torch.tensor(1.0, device=dev, requires_grad=True)
    render_mesh(v * s, f, cams, backend="nvdiffrast_walk").mask.sum().backward()
    area = math.pi * _proj_radius(cams, dist, r) ** 2
    assert float(s.grad) == pytest.approx(2 * area * dist**2 / (dist**2 - r**2), rel=0.03)


def test_torch_backend_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (torch.cuda.is_available() is False)")
    check_sphere("torch", "cuda")
    check_textured_quad("torch", "cuda")
    check_disc_silhouette_gradient("torch", "cuda")


def test_backends_agree() -> None:
    dev = _nvdiffrast_or_skip()
    from idsculpt.core.render.renderer import compare_backends

    v, f = _bumpy_sphere(5, dev)
    cams = Cameras.orbit([0.0, 10.0, -5.0, 0.0], [0.0, 45.0, 180.0, -90.0], 2.7, 30.0, 256).to(dev)
    stats = compare_backends(v, f, cams)
    assert stats["mask_iou"] >= 0.99, stats
    assert stats["normal_cos_mean"] >= 0.99, stats
    assert stats["face_id_match"] >= 0.95, stats  # nvdiffrast snaps vertices to 1/16 px


def _bumpy_sphere(subdiv: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A sphere with smooth bumps: self-occlusion and varied normals, like a head."""
    v, f = _sphere(subdiv, 1.0, device)
    bump = 0.08 * torch.sin(5 * v[:, 0]) * torch.cos(4 * v[:, 1]) + 0.05 * torch.sin(7 * v[:, 2])
    return v * (1 + bump[:, None]), f
