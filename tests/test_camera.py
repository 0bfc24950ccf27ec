import math

import torch

import pytest

from idsculpt.core.camera import EG3D_FOCAL, Cameras, eg3d_frontal_label, preview_cameras


def test_orbit_front_camera_axes():
    cam = Cameras.orbit(0.0, 0.0, 2.7, 30.0)
    c2w = cam.cam2world[0]
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6)
    # OpenCV axes: x right (= world +x seen from the front), y down (= world -y), z toward the origin
    assert torch.allclose(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[:3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_azimuth_and_elevation_directions():
    cam = Cameras.orbit([30.0, 0.0], [0.0, 90.0], 3.0)
    assert cam.position[0, 1] > 0  # positive elevation: above
    assert torch.allclose(cam.position[1], torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)  # +90° az: +x


def test_eg3d_frontal_label_matches_panohead():
    label = eg3d_frontal_label()[0]
    expected = torch.tensor(
        [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, EG3D_FOCAL, 0, 0.5, 0, EG3D_FOCAL, 0.5, 0, 0, 1], dtype=torch.float32
    )
    assert torch.allclose(label, expected, atol=1e-5)


def test_label_round_trip_and_projection():
    cams = Cameras.orbit([-10.0, 20.0], [35.0, -120.0], [2.7, 4.0], [13.37, 40.0], resolution=256)
    back = Cameras.from_eg3d_label(cams.eg3d_label(), 256)
    assert torch.allclose(back.cam2world, cams.cam2world, atol=1e-6)
    assert torch.allclose(back.fov, cams.fov, atol=1e-4)
    # the origin projects to the image centre; a point on the camera's up axis above it
    px = cams.project(torch.zeros(1, 3))
    assert torch.allclose(px, torch.full_like(px, 128.0), atol=1e-3)


def test_projection_matrix_agrees_with_pixels():
    cams = Cameras.orbit(15.0, 40.0, 3.0, 35.0, resolution=(120, 160))
    pts = torch.randn(50, 3) * 0.5
    clip = torch.cat([pts, torch.ones(50, 1)], -1) @ cams.full_projection()[0].T
    ndc = clip[:, :2] / clip[:, 3:]
    px_from_clip = torch.stack([(ndc[:, 0] + 1) * 160 / 2, (ndc[:, 1] + 1) * 120 / 2], -1)
    assert torch.allclose(px_from_clip, cams.project(pts)[0], atol=1e-3)


def test_rays_hit_projected_pixels():
    cams = Cameras.orbit(10.0, -30.0, 3.0, 30.0, resolution=64)
    o, d = cams.rays()
    # ray through pixel centre (20, 40) reprojects there
    p = o[0, 20, 40] + 2.5 * d[0, 20, 40]
    px = cams.project(p[None])[0, 0]
    assert torch.allclose(px, torch.tensor([40.5, 20.5]), atol=1e-3)
    assert math.isclose(float(cams.focal_normalized()[0]), 0.5 / math.tan(math.radians(15)), rel_tol=1e-6)


def test_preview_cameras_evenly_spaced_around_the_origin():
    """A count n gives azimuths 0, 360/n, ... wrapped to (-180, 180], at the given distance and elevation."""
    cams = preview_cameras(4, 64, distance=2.0, fov=40.0, elevation=30.0)
    el, d = math.radians(30.0), 2.0
    expected = torch.tensor([[0.0, d * math.sin(el), d * math.cos(el)], [d * math.cos(el), d * math.sin(el), 0.0],
                             [0.0, d * math.sin(el), -d * math.cos(el)], [-d * math.cos(el), d * math.sin(el), 0.0]])
    assert torch.allclose(cams.position, expected, atol=1e-5)
    assert (cams.height, cams.width) == (64, 64) and torch.allclose(cams.fov, torch.full((4,), 40.0))
    # every camera looks at the origin: it projects to the image centre
    assert torch.allclose(cams.project(torch.zeros(1, 3))[..., :2], torch.full((4, 1, 2), 32.0), atol=1e-4)


def test_preview_cameras_frame_vertices():
    """With ``frame``: look at the bounding-box centre from margin * radius / sin(fov / 2)."""
    centre = torch.tensor([0.3, -0.2, 0.5])
    verts = centre + torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0.5, 0], [0, -0.5, 0], [0, 0, 0.25], [0, 0, -0.25]])
    cams = preview_cameras([0.0, 90.0], 32, fov=30.0, elevation=0.0, frame=verts, margin=1.1)
    dist = 1.1 * 1.0 / math.sin(math.radians(15.0))
    assert torch.allclose(cams.position, centre + torch.tensor([[0.0, 0.0, dist], [dist, 0.0, 0.0]]), atol=1e-4)
    assert torch.allclose(cams.project(centre[None])[..., :2], torch.full((2, 1, 2), 16.0), atol=1e-4)
    with pytest.raises(ValueError, match="empty"):
        preview_cameras([0.0], 32, frame=torch.zeros(0, 3))


def test_first_camera_of_a_batch():
    cams = Cameras.orbit(0.0, [10.0, 20.0, 30.0], 2.7)
    first = cams.first()
    assert len(first) == 1 and torch.equal(first.cam2world, cams.cam2world[:1])
    assert torch.equal(cams[:1].first().cam2world, cams.cam2world[:1])
    with pytest.raises(ValueError, match="no camera"):
        cams[[]].first()
