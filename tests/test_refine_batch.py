"""Texture refinement's ``denoise_batch`` (core/texture/refine.py): the SDEdit targets of K consecutive random
views from one denoiser call, consumed one per random step in order.

Known answers: the random stream is threestudio's draw order (K=1: camera then t per view, today's stream; K>1:
the K cameras then ONE t per batch), the denoiser sees each view rendered with the texture of the batch's first
step, the loss of a random step compares its own current render with its own target, a run of 400 steps with the
reference view makes ceil(200 / K) denoiser calls (the last one holding only the views still needed), and
K = 1 never calls ``denoise_batch``.
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from idsculpt.core.render.torch_backend import TorchBackend
from idsculpt.core.texture import (
    ReferenceView, RefineConfig, denoise_views, refine_texture, render_textured, sample_refine_camera,
)
from texture_oracle import OracleDenoiser, degraded_texture, known_head, portrait_camera

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

RES = 24
BE = TorchBackend("cpu", walk_steps=0, background_silhouettes=False)


@pytest.fixture(scope="module")
def head():
    mesh, gt = known_head(256, subdiv=2, normalised=True)
    start = degraded_texture(gt.texture, seed=2)
    cam = portrait_camera(RES)
    ref, _ = render_textured(gt, gt.texture, cam, 1.0, BE)
    reference = ReferenceView(ref.color[0], cam, (ref.mask[0, ..., 0] > 0.5).float())
    return mesh.with_(texture=start), gt, reference


class Recorder:
    """A denoiser that records every call and returns, for view i of call c, a flat image of value
    (c * 8 + i + 1) / 100 (so each target says which call and row it came from)."""

    def __init__(self, batched: bool = True) -> None:
        self.calls: list[dict] = []
        if not batched:
            self.denoise_batch = None  # a third-party denoiser without the batched method

    def _target(self, image: torch.Tensor, row: int) -> torch.Tensor:
        return torch.full_like(image, (len(self.calls) * 8 + row + 1) / 100)

    def denoise(self, image, normal_control, view, t):
        out = self._target(image, 0)
        self.calls.append({"kind": "one", "images": image[None].clone(), "views": [view], "t": int(t)})
        return out

    def denoise_batch(self, images, normal_controls, views, t):
        assert images.shape == normal_controls.shape and images.shape[0] == len(views) and images.shape[-1] == 3
        out = torch.stack([self._target(images[i], i) for i in range(len(views))])
        self.calls.append({"kind": "batch", "images": images.clone(), "views": list(views), "t": int(t)})
        return out


def _config(steps: int, k: int, **kw) -> RefineConfig:
    return RefineConfig(refine_steps=steps, resolution=RES, backend=BE, seed=7, denoise_batch=k, preview_every=1, **kw)


def _expected_stream(config: RefineConfig, batches: list[int]) -> list[tuple[list[tuple[float, float]], int]]:
    """threestudio's draw order replayed: per batch its cameras, then one t."""
    gen = torch.Generator().manual_seed(config.seed)
    out = []
    for n in batches:
        views = [sample_refine_camera(config, gen) for _ in range(n)]
        t = int(torch.randint(*config.t_range, (), generator=gen))
        out.append(([(v.elevation, v.azimuth) for v in views], t))
    return out


def test_one_view_per_call_is_the_authors_stream_and_never_batches(head):
    """K = 1: ``denoise`` once per random step, camera then t per view (the stream of the authors' loop), the
    denoiser's input the very render of the step's loss (an identity target gives zero squared error)."""
    mesh, _, reference = head
    rec = Recorder()
    res = refine_texture(mesh, rec, reference, _config(8, 1))
    assert [c["kind"] for c in rec.calls] == ["one"] * 4
    expected = _expected_stream(_config(8, 1), [1, 1, 1, 1])
    assert [([(v.elevation, v.azimuth) for v in c["views"]], c["t"]) for c in rec.calls] == expected

    class Identity:
        def denoise(self, image, normal_control, view, t):
            return image.clone()

    res = refine_texture(mesh, Identity(), None, _config(5, 1))
    assert all(r["l2"] == 0.0 for r in res.losses)
    # a denoiser with denoise_batch gives the same run at K = 1 as one without it
    a = refine_texture(mesh, OracleDenoiser(head[1], prior_std=0.5, backend=BE), reference, _config(4, 1))
    plain = OracleDenoiser(head[1], prior_std=0.5, backend=BE)
    plain.denoise_batch = None
    b = refine_texture(mesh, plain, reference, _config(4, 1))
    assert torch.equal(a.mesh.texture, b.mesh.texture) and a.losses == b.losses


def test_batches_draw_cameras_then_one_t_and_targets_are_consumed_in_order(head):
    """K = 4, 10 steps with the reference view: random steps 0, 2, 4, 6, 8 → one call of 4 views, then one of
    the single view left; each random step's loss uses its own row's target and its own view."""
    mesh, _, reference = head
    rec = Recorder()
    previews: dict[int, torch.Tensor] = {}
    res = refine_texture(mesh, rec, reference, _config(10, 4), progress=lambda d, n, p: previews.__setitem__(d - 1, p))
    assert [(c["kind"], len(c["views"])) for c in rec.calls] == [("batch", 4), ("batch", 1)]
    expected = _expected_stream(_config(10, 4), [4, 1])
    got = [([(v.elevation, v.azimuth) for v in c["views"]], c["t"]) for c in rec.calls]
    assert got == expected
    random = [r for r in res.losses if r["kind"] == "random"]
    assert [r["step"] for r in random] == [0, 2, 4, 6, 8]
    flat = [va for views, _ in expected for va in views]
    assert [(r["elevation"], r["azimuth"]) for r in random] == flat
    assert [r["t"] for r in random] == [expected[0][1]] * 4 + [expected[1][1]]
    # targets in order: row i of call c is the flat value (8c + i + 1) / 100
    values = [(8 * 0 + i + 1) / 100 for i in range(4)] + [(8 * 1 + 1) / 100]
    for r, v in zip(random, values):
        torch.testing.assert_close(previews[r["step"]], torch.full((RES, RES, 3), v))


def test_the_batch_is_rendered_with_the_texture_of_its_first_step(head):
    """Every row the denoiser sees is its view rendered with the texture at the batch's first step (not at the
    row's own later step): the AdamW watch of the bench reads the texture after each step."""
    import evidence_oracle_texture as bench

    mesh, _, reference = head
    rec = Recorder()
    snaps: dict[int, torch.Tensor] = {}
    with bench.texture_snapshots(set(range(1, 12)), snaps.__setitem__) as progress:
        refine_texture(mesh, rec, reference, _config(12, 3), progress=progress)
    assert [len(c["views"]) for c in rec.calls] == [3, 3]
    for c, first_step in zip(rec.calls, (0, 6)):
        tex = mesh.texture if first_step == 0 else snaps[first_step]
        # the texture went through logit/sigmoid: compare with the texture the loop held, to float precision
        for i, view in enumerate(c["views"]):
            out, _ = render_textured(mesh, tex, view.camera, 1.0, BE)
            torch.testing.assert_close(c["images"][i], out.color[0], atol=2e-6, rtol=0)
    # ...and the texture did move between the rows' steps: the later rows' renders are stale
    assert (snaps[4] - snaps[1]).abs().max() > 1e-3


def _count_run(head, steps: int, k: int) -> list[int]:
    """Batch sizes of a run of ``steps`` steps with the reference view (a 16² texture and 8-px views: the count
    is the point, not the pictures)."""
    mesh, _, reference = head
    rec = Recorder()
    cfg = RefineConfig(refine_steps=steps, resolution=8, backend=BE, seed=1, denoise_batch=k)
    small = ReferenceView(torch.full((8, 8, 3), 0.5), reference.camera.with_resolution(8), None)
    refine_texture(mesh.with_(texture=mesh.texture[::16, ::16].contiguous()), rec, small, cfg)
    return [len(c["views"]) for c in rec.calls]


@pytest.mark.parametrize("k", [3, 4])
def test_calls_are_ceil_random_views_over_k_with_a_short_last_batch(head, k):
    """40 steps with the reference view: 20 random views, ceil(20 / k) calls (3: 6 x 3 + 2; 4: 5 x 4)."""
    sizes = _count_run(head, 40, k)
    assert len(sizes) == math.ceil(20 / k) and sum(sizes) == 20
    assert sizes[:-1] == [k] * (len(sizes) - 1) and sizes[-1] == 20 - k * (len(sizes) - 1)


@pytest.mark.slow
def test_a_full_run_makes_ceil_200_over_k_calls(head):
    """The shipped 400 steps at k = 3: 66 calls of 3 views and one of the 2 left (67 = ceil(200 / 3))."""
    sizes = _count_run(head, 400, 3)
    assert len(sizes) == 67 == math.ceil(200 / 3) and sizes == [3] * 66 + [2]


def test_interrupt_mid_batch_stops_the_run(head):
    mesh, _, reference = head
    rec = Recorder()
    seen: list[int] = []

    class Stop(Exception):
        pass

    def interrupt():
        if len(seen) == 3:  # step 3: inside the first batch of 4 random views (steps 0, 2, 4, 6)
            raise Stop
        seen.append(1)

    with pytest.raises(Stop):
        refine_texture(mesh, rec, reference, _config(40, 4), interrupt=interrupt)
    assert len(rec.calls) == 1


def test_a_denoiser_without_denoise_batch_is_called_per_view(head):
    """``denoise_views``' fallback: the same targets as the oracle's own denoise_batch, one denoise per view."""
    _, gt, _ = head
    gen = torch.Generator().manual_seed(3)
    cfg = _config(1, 3)
    views = [sample_refine_camera(cfg, gen) for _ in range(3)]
    images = torch.rand(3, RES, RES, 3, generator=gen)
    batched = OracleDenoiser(gt, prior_std=0.5, backend=BE)
    one = OracleDenoiser(gt, prior_std=0.5, backend=BE)
    one.denoise_batch = None
    a = denoise_views(batched, images, torch.zeros_like(images), views, 120)
    b = denoise_views(one, images, torch.zeros_like(images), views, 120)
    torch.testing.assert_close(a, b)
    assert (batched.calls, one.calls) == (1, 3) and batched.ts == one.ts == [120] * 3
    # and each row is that view's own restoration: its truth plus a(t) of its own error
    for i in range(3):
        torch.testing.assert_close(a[i], one.denoise(images[i], None, views[i], 120))


def test_denoise_batch_must_be_positive(head):
    mesh, _, reference = head
    with pytest.raises(ValueError, match="denoise_batch must be ≥ 1"):
        refine_texture(mesh, Recorder(), reference, _config(2, 0))
