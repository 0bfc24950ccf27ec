"""DMTet core: tet grid, marching tets, mesh → SDF init, regularisers (CPU, small grids)."""
from __future__ import annotations

import math

import pytest
import torch

from torch_threads import one_thread  # noqa: F401  (autouse: this module runs single-threaded)
from idsculpt.core.dmtet import (
    DMTetGeometry,
    MeshNormalization,
    TetGrid,
    WindingNumber,
    chamfer_distance,
    head_sdf,
    laplacian_loss,
    mesh_edges,
    marching_tets,
    mesh_sdf_on_grid,
    normal_consistency_loss,
    normalize_mesh,
    procedural_head_mesh,
    sphere_sdf,
)
from idsculpt.core.dmtet.sdf_init import _solid_angles, point_triangle_distance
from idsculpt.core.mesh import HeadMesh


def _edge_stats(faces: torch.Tensor) -> tuple[bool, bool]:
    """(every undirected edge has exactly 2 faces, every directed edge appears exactly once)."""
    f = faces.long()
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    nv = int(f.max()) + 1
    dkey = directed[:, 0] * nv + directed[:, 1]
    ukey = directed.min(1).values * nv + directed.max(1).values
    _, ucount = torch.unique(ukey, return_counts=True)
    _, dcount = torch.unique(dkey, return_counts=True)
    return bool((ucount == 2).all()), bool((dcount == 1).all())


def _signed_volume(v: torch.Tensor, f: torch.Tensor) -> float:
    return float((v[f[:, 0]] * torch.linalg.cross(v[f[:, 1]], v[f[:, 2]], dim=-1)).sum() / 6)


def _area(v: torch.Tensor, f: torch.Tensor) -> float:
    return float(torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1).norm(dim=-1).sum() / 2)


# ---------------------------------------------------------------------------- grid
def test_grid_tets_positive_and_conforming():
    g = TetGrid(5, radius=1.0)
    p = g.vertices().double()
    t = g.tets()
    assert t.shape == (6 * 125, 4) and g.num_tets == t.shape[0]
    e = p[t]
    det = torch.linalg.det(torch.stack([e[:, 1] - e[:, 0], e[:, 2] - e[:, 0], e[:, 3] - e[:, 0]], 1))
    assert bool((det > 0).all())
    # The 6 tets of each cube fill it exactly.
    assert abs(float(det.sum() / 6) - 8.0) < 1e-9
    # Analytic edge ids agree with the tets' vertex pairs, and the analytic edge list is exactly the
    # set of distinct tet edges (checked with torch.unique at this tiny size).
    eid = g.tet_edge_ids()
    a, b = g.edge_endpoints(eid)
    pairs = torch.tensor([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])
    tv = torch.stack([t[:, pairs[:, 0]], t[:, pairs[:, 1]]], -1).sort(-1).values
    assert torch.equal(torch.stack([a, b], -1).sort(-1).values, tv)
    uniq = torch.unique(tv.reshape(-1, 2), dim=0)
    edges = g.edges().sort(-1).values
    assert edges.shape == uniq.shape
    assert torch.equal(torch.unique(edges, dim=0), uniq)


def test_grid_resolution_matches_quartet_density():
    assert TetGrid.from_resolution(128).n == 64
    assert TetGrid.from_resolution(256).num_vertices == 129**3
    with pytest.raises(ValueError):
        TetGrid(1)


# ---------------------------------------------------------------------------- marching tets
def test_marching_tets_sphere_watertight_outward_area():
    r = 0.6
    g = TetGrid(48)
    p = g.vertices()
    v, f = marching_tets(g, p, sphere_sdf(p, r))
    closed, consistent = _edge_stats(f)
    assert closed and consistent
    # Outward: positive enclosed volume close to the ball's; normals point away from the centre.
    assert abs(_signed_volume(v, f) / (4 / 3 * math.pi * r**3) - 1) < 0.02
    fn = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    assert bool(((fn * v[f].mean(1)).sum(-1) > 0).all())
    assert abs(_area(v, f) / (4 * math.pi * r * r) - 1) < 0.02
    # Every vertex is on the sphere to within the linear-interpolation error.
    assert float((v.norm(dim=-1) - r).abs().max()) < 0.25 * g.cell_size


def test_marching_tets_is_differentiable_and_grid_boundary_closes_surface():
    g = TetGrid(16)
    geo = DMTetGeometry.from_sdf_fn(g, lambda p: p[:, 1] - 0.1)  # a half-space: cut by the grid box
    v, f = geo.extract()
    closed, consistent = _edge_stats(f)
    assert closed and consistent  # the forced-outside boundary layer closes it
    (v[:, 1].sum()).backward()
    assert geo.sdf.grad.abs().sum() > 0 and geo.deformation.grad.abs().sum() > 0
    # The analytic gradient matches finite differences: d(volume)/d(sdf) vs a uniform SDF shift.
    g2 = TetGrid(8)
    sdf = sphere_sdf(g2.vertices(), 0.5).requires_grad_(True)
    v2, f2 = marching_tets(g2, g2.vertices(), sdf)
    vol = (v2[f2[:, 0]] * torch.linalg.cross(v2[f2[:, 1]], v2[f2[:, 2]], dim=-1)).sum() / 6
    (grad,) = torch.autograd.grad(vol, sdf)
    eps = 1e-3  # small enough that no vertex changes sign
    v3, f3 = marching_tets(g2, g2.vertices(), sdf.detach() - eps)  # lower SDF = bigger inside
    fd = (_signed_volume(v3, f3) - float(vol.detach())) / eps
    assert fd > 0 and abs(float(-grad.sum()) - fd) < 0.02 * fd


def test_deformation_is_bounded():
    g = TetGrid(8)
    geo = DMTetGeometry(g, sphere_sdf(g.vertices(), 0.5))
    with torch.no_grad():
        geo.deformation.fill_(100.0)
    off = (geo.positions() - g.vertices()).abs().max().detach()
    assert float(off) <= 0.25 * g.cell_size + 1e-6
    with pytest.raises(ValueError):
        DMTetGeometry(g, deform_fraction=0.5)


def test_procedural_head_is_closed_and_nonconvex():
    m = procedural_head_mesh(48)
    closed, consistent = _edge_stats(m.faces)
    assert closed and consistent and _signed_volume(m.vertices, m.faces) > 0
    assert float(m.vertices.norm(dim=-1).max()) < 0.95
    # Non-convex: the eye sockets are hollows: points between the sockets' rims are outside the hull.
    import trimesh

    tm = trimesh.Trimesh(m.vertices.numpy(), m.faces.numpy())
    assert tm.convex_hull.volume > tm.volume * 1.02


# ---------------------------------------------------------------------------- SDF init
def test_point_triangle_distance_known_values():
    tri = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]], dtype=torch.float64)[None].expand(4, 1, 3, 3)
    p = torch.tensor([[0.2, 0.2, 0.5], [2.0, 0, 0], [0.5, 0.5, 0], [-1, -1, 0]], dtype=torch.float64)
    d = point_triangle_distance(p, tri)[:, 0]
    assert torch.allclose(d, torch.tensor([0.5, 1.0, 0.0, math.sqrt(2)], dtype=torch.float64), atol=1e-9)


def test_winding_number_matches_exact_sum():
    m = procedural_head_mesh(24)
    wn = WindingNumber(m.vertices, m.faces)
    q = torch.rand(300, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fast = wn(q)
    exact = _solid_angles(q.double(), m.vertices.double()[m.faces][None].expand(300, -1, -1, -1)).sum(1) / (4 * math.pi)
    assert float((fast - exact).abs().max()) < 0.02
    inside = head_sdf(q) < -0.02
    outside = head_sdf(q) > 0.02
    assert bool((fast[inside] > 0.9).all()) and bool((fast[outside].abs() < 0.1).all())


def test_winding_number_chunking_changes_only_the_summation_order():
    """The GPU's larger chunks (WindingNumber.chunk_sizes) sum the same terms: chunk sizes from one
    query / one parent cluster up to everything at once give the same winding numbers."""
    m = procedural_head_mesh(24)
    wn = WindingNumber(m.vertices, m.faces, leaf=8, fanout=4)
    q = torch.rand(500, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = wn(q)
    assert wn.chunk_sizes() == (2048, 8192)  # on the CPU: the sizes the tests always ran with
    for chunk, pairs in ((1, 1), (37, 100), (500, 1 << 17), (4096, 1 << 20)):
        assert torch.allclose(wn(q, chunk=chunk, pair_chunk=pairs), ref, atol=1e-5), (chunk, pairs)


def _holey(m: HeadMesh, n_holes: int = 6, seed: int = 0) -> HeadMesh:
    """Remove a few small patches of faces (each a face and its neighbours): small holes."""
    g = torch.Generator().manual_seed(seed)
    f = m.faces
    seeds = torch.randint(0, f.shape[0], (n_holes,), generator=g)
    drop = torch.zeros(f.shape[0], dtype=torch.bool)
    for s in seeds.tolist():
        ring = torch.isin(f, f[s]).any(1)  # faces touching the seed face
        drop |= ring
    return HeadMesh(m.vertices, f[~drop])


@pytest.mark.parametrize("holes", [False, True])
def test_mesh_sdf_init_reproduces_mesh(holes):
    target = procedural_head_mesh(64)
    src = _holey(target) if holes else target
    if holes:
        closed, _ = _edge_stats(src.faces)
        assert not closed  # really has holes
    g = TetGrid(32)
    sdf = mesh_sdf_on_grid(src.vertices, src.faces, g)
    v, f = marching_tets(g, g.vertices(), sdf)
    closed, consistent = _edge_stats(f)
    assert closed and consistent
    ch = chamfer_distance(v, f, target.vertices, target.faces, n=5000)
    assert ch < 0.25 * g.cell_size, ch
    # Far values carry the right sign.
    q = g.vertices()
    hs = head_sdf(q)
    sure = hs.abs() > 2 * g.cell_size
    assert bool((torch.sign(sdf[sure]) == torch.sign(hs[sure])).all())


def test_normalize_mesh_frame_and_cameras():
    from idsculpt.core.camera import Cameras
    from idsculpt.core.render import render_mesh

    m = procedural_head_mesh(24)
    # The same head stored z-up / front -y (a common DCC export) and off-centre, scaled.
    rot = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # world (x,y,z) -> (x, -z, y): y-up → z-up
    stored = (m.vertices @ rot.T) * 3.0 + torch.tensor([1.0, 2.0, 3.0])
    nm = normalize_mesh(stored, 0.9, up="+z", front="-y")
    back = nm.apply(stored)
    assert abs(float(back.norm(dim=-1).max()) - 0.9) < 1e-5
    # Up and front restored: the nose (max z) is in front, the top of the skull is +y.
    assert float(back[:, 2].max()) > 0.5 and float(back[:, 1].max()) > 0.5
    assert torch.allclose(nm.invert(back), stored, atol=1e-4)
    # Cameras follow: the same image before and after.
    cam = Cameras.orbit(10.0, 30.0, 2.7, 30.0, 32)
    c_in = Cameras(cam.cam2world.clone(), cam.fov, 32, 32)
    c_in.cam2world[:, :3, :3] = rot @ cam.cam2world[:, :3, :3]
    c_in.cam2world[:, :3, 3] = (cam.position @ rot.T) * 3.0 + torch.tensor([1.0, 2.0, 3.0])
    a = render_mesh(stored, m.faces, c_in).mask
    b = render_mesh(back, m.faces, nm.apply_cameras(c_in)).mask
    assert float((a - b).abs().mean()) < 1e-3
    with pytest.raises(ValueError):
        normalize_mesh(stored, up="+z", front="+z")


def test_sdf_init_rejects_bad_input():
    g = TetGrid(8)
    with pytest.raises(ValueError):
        mesh_sdf_on_grid(torch.zeros(3, 3), torch.zeros(0, 3, dtype=torch.long), g)
    m = procedural_head_mesh(16)
    with pytest.raises(ValueError, match="outside the tet grid"):
        mesh_sdf_on_grid(m.vertices + 10.0, m.faces, g)


# ---------------------------------------------------------------------------- regularisers
def test_regularizers_known_values():
    g = TetGrid(24)
    p = g.vertices()
    v, f = marching_tets(g, p, sphere_sdf(p, 0.6))
    # A flat grid: zero normal consistency; zero Laplacian at the interior vertices (the uniform
    # Laplacian of a regular grid), non-zero only on the border.
    xs, ys = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    pv = torch.stack([xs, ys, torch.zeros_like(xs)], -1).reshape(-1, 3)
    quads = [(i * 5 + j, (i + 1) * 5 + j, (i + 1) * 5 + j + 1, i * 5 + j + 1) for i in range(4) for j in range(4)]
    pf = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    assert float(normal_consistency_loss(pv, pf)) < 1e-9
    # Known value: a single vertex lifted by h above a flat fan of 6 equilateral triangles (unit
    # edges) has Laplacian (0, 0, -h); the 6 rim vertices of the closed fan each see it.
    ang = torch.arange(6) * math.pi / 3
    rim = torch.stack([ang.cos(), ang.sin(), torch.zeros(6)], -1)
    h = 0.3
    fan_v = torch.cat([torch.tensor([[0.0, 0.0, h]]), rim])
    fan_f = torch.tensor([[0, 1 + k, 1 + (k + 1) % 6] for k in range(6)])
    lap = laplacian_loss(fan_v, fan_f)
    # centre: (0,0,-h); rim vertex k (neighbours: centre + 2 rim vertices) in its mean.
    centre = torch.tensor([0.0, 0.0, -h])
    rims = torch.stack([(fan_v[0] + rim[(k + 1) % 6] + rim[(k - 1) % 6]) / 3 - rim[k] for k in range(6)])
    expect = torch.cat([centre[None], rims]).pow(2).mean()
    assert abs(float(lap) - float(expect)) < 1e-6
    # Vertices on no face do not count; precomputed edges give the same value.
    spare = torch.cat([fan_v, torch.tensor([[5.0, 5.0, 5.0], [-3.0, 1.0, 2.0]])])
    assert abs(float(laplacian_loss(spare, fan_f)) - float(expect)) < 1e-6
    assert float(laplacian_loss(spare, fan_f, mesh_edges(fan_f, spare.shape[0]))) == float(laplacian_loss(spare, fan_f))
    # A sphere has small but positive values; noise raises both.
    nc0, lap0 = float(normal_consistency_loss(v, f)), float(laplacian_loss(v, f))
    noisy = v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0))
    assert float(normal_consistency_loss(noisy, f)) > 2 * nc0 > 0
    assert float(laplacian_loss(noisy, f)) > 2 * lap0 > 0
    # Gradients flow.
    vv = v.clone().requires_grad_(True)
    (normal_consistency_loss(vv, f) + laplacian_loss(vv, f)).backward()
    assert torch.isfinite(vv.grad).all() and vv.grad.abs().sum() > 0
