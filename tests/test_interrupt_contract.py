"""The one progress/interrupt contract (core/stage_types.py, issue 21): every stage's entry point calls
``interrupt()`` in its loop and stops when it RAISES; its return value is never read.

Known answer for each entry point: an interrupt that raises at its first call ends the call with that very
exception object (core catches nothing), after exactly one call, with no result and no progress reported
after the raise. Inputs are tiny (CPU, well under a second each after the shared fixtures).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np
import pytest
import torch
import trimesh

sys.path.insert(0, os.path.dirname(__file__))
from panohead_fixtures import tiny_generator  # noqa: E402
from torch_threads import one_thread  # noqa: E402,F401  (autouse: this module runs single-threaded)

from idsculpt.core import stage_types  # noqa: E402
from idsculpt.core.camera import Cameras, eg3d_frontal_label  # noqa: E402
from idsculpt.core.dmtet import TetGrid, mesh_sdf_on_grid, procedural_head_mesh  # noqa: E402
from idsculpt.core.mesh import HeadMesh  # noqa: E402
from idsculpt.core.render import render_mesh  # noqa: E402


class Cancelled(Exception):
    """What a host's interrupt raises (ComfyUI: InterruptProcessingException, a plain Exception subclass)."""


def _stops_at_first_call(run: Callable[[Callable[[], None], Callable[..., None]], Any]) -> None:
    """``run(interrupt, progress)`` must end with the interrupt's own exception after one interrupt call,
    report no progress after it, and return nothing."""
    calls: list[int] = []
    progress_after: list[tuple] = []
    raised: list[Cancelled] = []

    def interrupt() -> None:
        calls.append(1)
        raised.append(Cancelled("cancelled by the host"))
        raise raised[-1]

    def progress(step: int, total: int, preview=None) -> None:
        if calls:
            progress_after.append((step, total))

    out = []
    with pytest.raises(Cancelled) as exc:
        out.append(run(interrupt, progress))
    assert exc.value is raised[0]  # the host's exception itself, not a wrapper or a substitute
    assert len(calls) == 1 and out == [] and progress_after == []


# ------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def head() -> HeadMesh:
    return procedural_head_mesh(24)


@pytest.fixture(scope="module")
def gan_views(head):
    cams = Cameras.orbit(torch.zeros(4), torch.tensor([0.0, 90.0, 180.0, -90.0]), 2.7, 30.0, 24)
    out = render_mesh(head.vertices, head.faces, cams)
    return stage_types.GanViews(cams, out.normal_world.detach(), (out.mask.detach() > 0.5).float())


@pytest.fixture(scope="module")
def uv_head():
    from idsculpt.core.texture import unwrap_uv

    s = trimesh.creation.icosphere(2)
    mesh, _ = unwrap_uv(HeadMesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)), 256)
    return mesh.with_(texture=torch.full((256, 256, 3), 0.5))


def _aligned_stand_in():
    """An AlignedPortrait without MediaPipe: a grey 64 px crop seen by PanoHead's frontal camera."""
    from idsculpt.core.panohead.align import AlignedPortrait

    return AlignedPortrait(image=np.full((64, 64, 3), 128, np.uint8), label=eg3d_frontal_label(), quad=np.zeros((4, 2)),
                           crop_matrix=np.zeros((2, 3)), landmarks=np.zeros((478, 3)), yaw_pitch_roll=(0.0, 0.0, 0.0))


# ------------------------------------------------------------------------------ stage 1 (PanoHead)
def test_stage1_panohead_stops():
    from idsculpt.core.panohead.invert import InversionConfig
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.panohead.pipeline import run_stage1

    cfg = InversionConfig(w_steps=3, pti_steps=2, w_avg_samples=16, neural_rendering_resolution=16, perceptual_size=32,
                          cuda_graphs=False)
    _stops_at_first_call(lambda i, p: run_stage1(None, tiny_generator(seed=3), VGG16Perceptual(), cfg, mesh_resolution=16,
                                                 view_resolution=16, n_views=2, aligned=_aligned_stand_in(),
                                                 progress=p, interrupt=i))


def test_stage1_mesh_extraction_and_views_stop():
    from idsculpt.core.panohead.extract import extract_mesh, gan_view_cameras, render_gan_views

    g = tiny_generator(seed=4)
    with torch.no_grad():
        planes = g.planes(g.mapping(torch.zeros(1, g.z_dim), eg3d_frontal_label()), noise_mode="const")
    _stops_at_first_call(lambda i, p: extract_mesh(g, planes=planes, resolution=16, interrupt=i))
    _stops_at_first_call(lambda i, p: render_gan_views(g, planes=planes, cameras=gan_view_cameras(n_views=2), resolution=16,
                                                       interrupt=i))


def test_stage1_from_a_mesh_stops(head):
    from idsculpt.core.panohead.place_mesh import run_stage1_mesh

    _stops_at_first_call(lambda i, p: run_stage1_mesh(_aligned_stand_in(), head, interrupt=i))


# ------------------------------------------------------------------------------------ stage 2
def test_sdf_initialisation_stops(head):
    _stops_at_first_call(lambda i, p: mesh_sdf_on_grid(head.vertices, head.faces, TetGrid(16), interrupt=i))


def test_sculpt_stops_in_its_initialisation_and_in_its_loop(head, gan_views):
    from idsculpt.core.dmtet import sphere_sdf
    from idsculpt.core.sculpt import RandomViewRanges, SculptConfig, Sculptor, sculpt

    cfg = SculptConfig(steps=20, gan_steps=20, grid_resolution=16, gan_batch=2, preview_every=0,
                       views=RandomViewRanges(resolution=24))
    _stops_at_first_call(lambda i, p: sculpt(head, gan_views, None, None, cfg, progress=p, interrupt=i, device="cpu"))
    s = Sculptor(head, gan_views, None, None, cfg, "cpu", initial_sdf=lambda x: sphere_sdf(x, 0.5))
    _stops_at_first_call(lambda i, p: s.run(progress=p, interrupt=i))
    assert s.step_index == 0  # stopped before the first step


# ------------------------------------------------------------------------------------ stage 3
def test_uv_unwrap_stops(head):
    from idsculpt.core.texture import unwrap_uv

    _stops_at_first_call(lambda i, p: unwrap_uv(head, 256, interrupt=i))


def test_texture_inpaint_and_refine_stop(uv_head):
    from idsculpt.core.texture import InpaintConfig, RefineConfig, progressive_inpaint, refine_texture

    class Grey:
        def inpaint(self, image, generate_mask, normal_control, context):
            return torch.full_like(image, 0.5)

        def denoise(self, image, normal_control, view, t):
            return torch.full_like(image, 0.5)

    _stops_at_first_call(lambda i, p: progressive_inpaint(uv_head, Grey(), config=InpaintConfig(render_resolution=32, resolution=32),
                                                          progress=p, interrupt=i))
    _stops_at_first_call(lambda i, p: refine_texture(uv_head, Grey(), None, RefineConfig(refine_steps=3, resolution=32), progress=p,
                                                     interrupt=i))


# ------------------------------------------------------------------------------------------ eval
def _coloured(head: HeadMesh) -> HeadMesh:
    return head.with_(vertex_colors=(head.vertices - head.vertices.min(0).values) / (head.vertices.max(0).values - head.vertices.min(0).values))


def test_eval_stops(head):
    from idsculpt.core.eval import evaluate as ev

    cfg = ev.EvalConfig(sweep_azimuths=(0.0, 90.0), sweep_resolution=32)
    _stops_at_first_call(lambda i, p: ev.evaluate_head(_coloured(head), torch.full((32, 32, 3), 0.5), None, config=cfg,
                                                       progress=p, interrupt=i))


def test_eval_previews_are_the_contracts_image_type(head):
    """One preview type for every stage: [H,W,3] float tensor in 0..1 (eval's used to be a uint8 array). Known
    answer: the first preview is the reference-view render itself, the head on black over the portrait."""
    from idsculpt.core.eval import evaluate as ev

    cfg = ev.EvalConfig(sweep_azimuths=(0.0, 90.0), sweep_resolution=32)
    portrait = torch.full((32, 32, 3), 0.25)
    seen = []
    ev.evaluate_head(_coloured(head), portrait, None, config=cfg, progress=lambda s, t, prev: seen.append(prev))
    previews = [x for x in seen if x is not None]
    assert len(previews) == 2
    for x in previews:
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (32, 32, 3)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    ref_cam = ev.resolve_reference_camera(None, 32, 32)
    colour, mask = ev.render_head(_coloured(head), ref_cam, 0.0, 1)
    torch.testing.assert_close(previews[0], (colour + portrait[None] * (1 - mask)).clamp(0, 1)[0])


# ----------------------------------------------------------------------------- the return value
def test_a_truthy_return_does_not_stop(head):
    """The return value is never read (the old ``if interrupt(): raise InterruptedError`` convention of stage 1
    is gone): an interrupt returning True lets the mesh views finish, with the same result as no interrupt."""
    from idsculpt.core.panohead.place_mesh import render_mesh_views

    calls = []
    cams = Cameras.orbit(torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]), 2.7, 30.0, 24)
    views = render_mesh_views(head, cams, batch=1, interrupt=lambda: calls.append(1) or True)
    assert len(calls) == 3  # once per batch
    plain = render_mesh_views(head, cams, batch=1)
    assert torch.equal(views.normals, plain.normals) and torch.equal(views.masks, plain.masks)
