"""ISD maths (core/guidance.py) against toy noise predictors with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from idsculpt.core.camera import Cameras
from idsculpt.core.guidance import (
    ISDConfig,
    ISDGuidance,
    NoisePrediction,
    NoisePredictor,
    ViewBatch,
    alphas_cumprod_from_sigma,
    azimuth_of,
    isd_weight,
    sd15_alphas_cumprod,
    sigma_from_alphas_cumprod,
)


class ToyPredictor:
    """A 'perfect denoiser' for one target: x0_hat = target, so eps_hat = (x - target) / sigma.

    encode() is the identity on channels-first images, so the ISD gradient on the image is known:
    grad_z = w(t) * (eps_hat - eps) = w(t) * (z - target) / sigma   (for cond = uncond).
    """

    def __init__(self, target: torch.Tensor, uncond_target: torch.Tensor | None = None):
        self.alphas_cumprod = sd15_alphas_cumprod()
        self.target = target  # [B,3,H,W]
        self.uncond_target = target if uncond_target is None else uncond_target
        self.seen: list[ViewBatch] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.movedim(-1, 1)

    def predict_noise(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        self.seen.append(views)
        s = sigma.view(-1, 1, 1, 1)
        return NoisePrediction((x - self.target) / s, (x - self.uncond_target) / s)


def test_schedule_and_sigma_mapping() -> None:
    ac = sd15_alphas_cumprod()
    sig = sigma_from_alphas_cumprod(ac)
    assert ac.shape == (1000,)
    # known SD1.5 values: sigma_min ~0.0292, sigma_max ~14.615 (k-diffusion / ComfyUI)
    assert sig[0].item() == pytest.approx(0.0292, abs=1e-3)
    assert sig[-1].item() == pytest.approx(14.6146, abs=1e-3)
    assert torch.allclose(alphas_cumprod_from_sigma(sig), ac)
    assert torch.allclose(isd_weight(sig), 1 - ac)


def test_protocol_and_camera_azimuth() -> None:
    p = ToyPredictor(torch.zeros(1, 3, 8, 8))
    assert isinstance(p, NoisePredictor)
    cams = Cameras.orbit(elevation=[0, 10, 0, 0], azimuth=[0, 60, -90, 180], distance=4.0)
    az = azimuth_of(cams)
    assert torch.allclose(az[:3], torch.tensor([0.0, 60.0, -90.0]), atol=1e-3)
    assert abs(abs(az[3].item()) - 180.0) < 1e-3


def test_gradient_pulls_image_toward_predictor_x0() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 3, 8, 8)
    img = torch.rand(2, 8, 8, 3, requires_grad=True)
    g = ISDGuidance(ToyPredictor(target), ISDConfig(cfg=7.5), generator=torch.Generator().manual_seed(1))
    loss = g(img, azimuth=torch.tensor([0.0, 100.0]))
    loss.backward()
    st = g.last_stats
    # exact answer: d loss / d image = w/sigma * (image - target) / B
    expect = (isd_weight(st.sigma) / st.sigma).view(-1, 1, 1, 1) * (img.detach().movedim(-1, 1) - target) / 2
    assert torch.allclose(img.grad.movedim(-1, 1), expect, rtol=1e-4, atol=1e-6)
    assert st.t.min() >= 20 and st.t.max() <= 500
    assert st.id_enabled.tolist() == [True, False]


def test_descent_converges_to_target() -> None:
    torch.manual_seed(0)
    target = torch.rand(1, 3, 8, 8)
    img = torch.zeros(1, 8, 8, 3, requires_grad=True)
    g = ISDGuidance(ToyPredictor(target), ISDConfig(cfg=1.0), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD([img], lr=2.0)
    d0 = (img.detach().movedim(-1, 1) - target).norm().item()
    for _ in range(60):
        opt.zero_grad()
        g(img).backward()
        opt.step()
    d1 = (img.detach().movedim(-1, 1) - target).norm().item()
    assert d1 < 0.2 * d0


def test_cfg_combines_cond_and_uncond() -> None:
    # cond target a, uncond target b: eps_hat - eps = ((1-s)(z-b) + s(z-a))/sigma  -> grad known
    a, b = torch.full((1, 3, 4, 4), 0.8), torch.full((1, 3, 4, 4), 0.2)
    img = torch.full((1, 4, 4, 3), 0.5, requires_grad=True)
    s = 50.0
    g = ISDGuidance(ToyPredictor(a, b), ISDConfig(cfg=s), generator=torch.Generator().manual_seed(3))
    g(img).backward()
    st = g.last_stats
    z = 0.5
    expect = isd_weight(st.sigma) / st.sigma * ((1 - s) * (z - 0.2) + s * (z - 0.8))
    assert torch.allclose(img.grad, expect.float().view(1, 1, 1, 1).expand_as(img), rtol=1e-4)


def test_annealing_and_ranges() -> None:
    g = ISDGuidance(ToyPredictor(torch.zeros(1, 3, 4, 4)), ISDConfig(anneal="linear", t_max=500, t_max_final=200))
    assert g.t_range(0, 100) == (20, 500)
    assert g.t_range(50, 100) == (20, 350)
    assert g.t_range(100, 100) == (20, 200)
    assert g.t_range(None, None) == (20, 500)
    gs = ISDGuidance(ToyPredictor(torch.zeros(1, 3, 4, 4)), ISDConfig(anneal="sqrt", t_max=500, t_max_final=100))
    assert gs.t_range(25, 100) == (20, 300)
    with pytest.raises(ValueError, match="t_min"):
        ISDConfig(t_min=600, t_max=500)
    with pytest.raises(ValueError, match="beyond"):
        ISDGuidance(ToyPredictor(torch.zeros(1, 3, 4, 4)), ISDConfig(t_max=1000))


def test_id_mask_wraps_azimuth() -> None:
    g = ISDGuidance(ToyPredictor(torch.zeros(1, 3, 4, 4)))
    m = g.id_mask(torch.tensor([0.0, 69.0, 71.0, -69.0, 350.0, 180.0, -200.0]))
    assert m.tolist() == [True, True, False, True, True, False, False]
    g2 = ISDGuidance(ToyPredictor(torch.zeros(1, 3, 4, 4)), ISDConfig(id_azimuth_limit=None))
    assert g2.id_mask(torch.tensor([180.0])).tolist() == [True]


def test_nan_guard_and_clip() -> None:
    class NaNPredictor(ToyPredictor):
        def predict_noise(self, x, sigma, views):
            p = super().predict_noise(x, sigma, views)
            p.cond[:, :, 0, 0] = float("nan")
            return p

    img = torch.rand(1, 4, 4, 3, requires_grad=True)
    g = ISDGuidance(NaNPredictor(torch.zeros(1, 3, 4, 4)), ISDConfig(grad_clip=0.01), generator=torch.Generator().manual_seed(0))
    loss = g(img)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(img.grad).all()
    assert int(g.last_stats.nonfinite) == 3
    assert img.grad.abs().max() <= 0.01 + 1e-7
    assert img.grad[0, 0, 0].abs().sum() == 0


def test_bad_input_shape() -> None:
    g = ISDGuidance(ToyPredictor(torch.zeros(1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        g(torch.rand(1, 3, 4, 4))


def test_cameras_reach_predictor() -> None:
    p = ToyPredictor(torch.zeros(3, 3, 4, 4))
    cams = Cameras.orbit(elevation=0, azimuth=[0, 45, 135], distance=4.0, resolution=4)
    with ISDGuidance(p) as g:
        g(torch.rand(3, 4, 4, 3, requires_grad=True), cams)
    v = p.seen[-1]
    assert v.cameras is cams
    assert v.id_enabled.tolist() == [True, True, False]
    assert torch.allclose(v.azimuth, torch.tensor([0.0, 45.0, 135.0]), atol=1e-3)
    assert math.isclose(float(v.sigma[0]), float(sigma_from_alphas_cumprod(p.alphas_cumprod)[v.t[0]]), rel_tol=1e-5)


def test_view_direction() -> None:
    from idsculpt.core.guidance import view_direction

    d = view_direction(torch.tensor([0.0, 44.0, 46.0, -90.0, 134.0, 136.0, -180.0, 10.0]),
                       torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 61.0]))
    assert d == ["front", "front", "side", "side", "side", "back", "back", "overhead"]


def test_view_direction_thresholds_of_the_two_stages() -> None:
    """The authors' prompt processor: geometry back = |az| > 120 (back_threshold 60), texture |az| > 135."""
    from idsculpt.core.guidance import ISD_VIEW_THRESHOLDS, TEXTURE_VIEW_THRESHOLDS, view_direction

    az, el = torch.tensor([119.0, 121.0, -121.0, 134.0, 136.0, 44.9, 45.1]), torch.zeros(7)
    assert view_direction(az, el, **ISD_VIEW_THRESHOLDS) == ["side", "back", "back", "back", "back", "front", "side"]
    assert view_direction(az, el, **TEXTURE_VIEW_THRESHOLDS) == ["side", "side", "side", "side", "back", "front", "side"]
    assert view_direction(torch.tensor([180.0]), torch.tensor([61.0]), **ISD_VIEW_THRESHOLDS) == ["overhead"]
