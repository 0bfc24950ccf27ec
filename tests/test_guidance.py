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
    isd_gradient,
    azimuth_of,
    isd_weight,
    sd15_alphas_cumprod,
    sigma_from_alphas_cumprod,
    vae_posterior_latents,
)


class ToyPredictor:
    """A 'perfect denoiser' for one target: x0_hat = target, so eps_hat = (x - target) / sigma.

    encode() is the identity on channels-first images, so the ISD gradient on the image is known:
    SDS: grad_z = w(t) * (eps_hat - eps) = w(t) * (z - target) / sigma   (for cond = uncond).
    With ``id_target`` / ``uncond_id_target`` the views with ID on denoise toward those instead (the ID
    tokens change both CFG branches); ``cond_no_id`` always denoises toward ``target`` (ID off).
    """

    def __init__(self, target: torch.Tensor, uncond_target: torch.Tensor | None = None,
                 id_target: torch.Tensor | None = None, uncond_id_target: torch.Tensor | None = None):
        self.alphas_cumprod = sd15_alphas_cumprod()
        self.target = target  # [B,3,H,W]
        self.uncond_target = target if uncond_target is None else uncond_target
        self.id_target = self.target if id_target is None else id_target
        self.uncond_id_target = self.uncond_target if uncond_id_target is None else uncond_id_target
        self.seen: list[ViewBatch] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.movedim(-1, 1)

    def predict_noise(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        self.seen.append(views)
        s = sigma.view(-1, 1, 1, 1)
        on = views.id_enabled.view(-1, 1, 1, 1)
        cond = torch.where(on, x - self.id_target, x - self.target) / s
        uncond = torch.where(on, x - self.uncond_id_target, x - self.uncond_target) / s
        no_id = (x - self.target) / s if views.cond_no_id is not None else None
        return NoisePrediction(cond, uncond, no_id)


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
    g = ISDGuidance(ToyPredictor(target), ISDConfig(cfg=7.5, estimator="sds"), generator=torch.Generator().manual_seed(1))
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
    g = ISDGuidance(ToyPredictor(target), ISDConfig(cfg=1.0, estimator="sds"), generator=torch.Generator().manual_seed(0))
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
    g = ISDGuidance(ToyPredictor(a, b), ISDConfig(cfg=s, estimator="sds"), generator=torch.Generator().manual_seed(3))
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


# ----------------------------------------------------------------------------- the authors' estimator
def _authors_targets():
    """Constant denoiser targets: cond a, uncond b (ID off); with ID on: cond a_id, uncond b_id."""
    return (torch.full((1, 3, 4, 4), 0.8), torch.full((1, 3, 4, 4), 0.2),
            torch.full((1, 3, 4, 4), 0.6), torch.full((1, 3, 4, 4), 0.3))


@pytest.mark.parametrize("azimuth", [100.0, -70.0, 180.0])
def test_authors_gradient_without_id_is_the_classifier_term(azimuth: float) -> None:
    """|az| >= 70: eps_est = eps_c, so grad = (cfg-1) w (eps_c - eps_u) = 49 w (b - a) / sigma: no z, no noise."""
    a, b, a_id, b_id = _authors_targets()
    p = ToyPredictor(a, b, a_id, b_id)
    img = torch.rand(1, 4, 4, 3, requires_grad=True)
    g = ISDGuidance(p, ISDConfig(cfg=50.0), generator=torch.Generator().manual_seed(5))
    g(img, azimuth=torch.tensor([azimuth])).backward()
    st = g.last_stats
    assert st.id_enabled.tolist() == [False] and st.extra["cond_no_id_rows"] == 0
    assert p.seen[-1].cond_no_id.tolist() == [False]  # no extra UNet row asked for
    expect = 49.0 * isd_weight(st.sigma) / st.sigma * (0.2 - 0.8)
    assert torch.allclose(img.grad, expect.float().view(1, 1, 1, 1).expand_as(img), rtol=1e-5)


@pytest.mark.parametrize("azimuth", [0.0, 69.0, -45.0])
def test_authors_gradient_with_id_uses_the_no_id_conditional(azimuth: float) -> None:
    """|az| < 70: grad = w [eps_u^ID + 50 (eps_c^ID - eps_u^ID) - eps_c^noID]
    = w [(a - a_id) + 49 (b_id - a_id)] / sigma for the constant targets."""
    a, b, a_id, b_id = _authors_targets()
    p = ToyPredictor(a, b, a_id, b_id)
    img = torch.rand(1, 4, 4, 3, requires_grad=True)
    g = ISDGuidance(p, ISDConfig(cfg=50.0), generator=torch.Generator().manual_seed(6))
    g(img, azimuth=torch.tensor([azimuth])).backward()
    st = g.last_stats
    assert st.id_enabled.tolist() == [True] and st.extra["cond_no_id_rows"] == 1
    assert p.seen[-1].cond_no_id.tolist() == [True]
    expect = isd_weight(st.sigma) / st.sigma * ((0.8 - 0.6) + 49.0 * (0.3 - 0.6))
    assert torch.allclose(img.grad, expect.float().view(1, 1, 1, 1).expand_as(img), rtol=1e-5)


def test_authors_gradient_mixed_batch_and_sds_option() -> None:
    """Two views (ID on / off) in one batch, each with its closed form; "sds" on the same draws instead
    compares the CFG prediction with the injected noise."""
    a, b, a_id, b_id = (t.expand(2, -1, -1, -1) for t in _authors_targets())
    img = torch.rand(2, 4, 4, 3, requires_grad=True)
    az = torch.tensor([10.0, 150.0])
    p = ToyPredictor(a, b, a_id, b_id)
    g = ISDGuidance(p, ISDConfig(cfg=50.0), generator=torch.Generator().manual_seed(7))
    g(img, azimuth=az).backward()
    st = g.last_stats
    assert p.seen[-1].cond_no_id.tolist() == [True, False]
    k = (isd_weight(st.sigma) / st.sigma).float()
    expect = torch.stack([k[0] * ((0.8 - 0.6) + 49 * (0.3 - 0.6)), k[1] * 49 * (0.2 - 0.8)]) / 2  # / B
    assert torch.allclose(img.grad, expect.view(2, 1, 1, 1).expand_as(img), rtol=1e-5)
    # plain SDS on the same generator state: eps_hat - eps = (eps_u + 50 (eps_c - eps_u)) - eps, with
    # eps_c = (z + sigma eps - x0_c) / sigma  ->  grad = w/sigma * (z - x0_u - 50 (x0_c - x0_u))
    img2 = img.detach().clone().requires_grad_(True)
    ps = ToyPredictor(a, b, a_id, b_id)
    gs = ISDGuidance(ps, ISDConfig(cfg=50.0, estimator="sds"), generator=torch.Generator().manual_seed(7))
    gs(img2, azimuth=az).backward()
    assert ps.seen[-1].cond_no_id is None  # SDS needs no extra row
    assert torch.equal(gs.last_stats.t, st.t)
    z = img2.detach().movedim(-1, 1)
    x0c = torch.stack([a_id[0], a[1]])
    x0u = torch.stack([b_id[0], b[1]])
    expect_sds = k.view(2, 1, 1, 1) * (z - x0u - 50 * (x0c - x0u)) / 2
    assert torch.allclose(img2.grad.movedim(-1, 1), expect_sds, rtol=1e-4, atol=1e-6)


class ConstantPredictor:
    """Ignores x: eps_c = c (ID on) / c0 (ID off), eps_u = u, eps_c with ID off = c0."""

    def __init__(self) -> None:
        self.alphas_cumprod = sd15_alphas_cumprod()
        g = torch.Generator().manual_seed(11)
        self.c, self.c0, self.u = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(3))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.movedim(-1, 1)

    def predict_noise(self, x, sigma, views):
        on = views.id_enabled.view(-1, 1, 1, 1)
        b = x.shape[0]
        return NoisePrediction(torch.where(on, self.c, self.c0).expand(b, -1, -1, -1).clone(),
                               self.u.expand(b, -1, -1, -1).clone(), self.c0.expand(b, -1, -1, -1).clone())


@pytest.mark.parametrize("azimuth", [0.0, 120.0])
def test_authors_gradient_has_no_injected_noise_term(azimuth: float) -> None:
    """With a predictor that ignores x, two different noise draws at the same t give the same gradient
    (the authors' form has no noise residual); plain SDS differs by exactly -w * (eps1 - eps2)."""
    grads = {}
    for est in ("authors", "sds"):
        for seed in (1, 2):
            img = torch.zeros(1, 4, 4, 3, requires_grad=True)
            g = ISDGuidance(ConstantPredictor(), ISDConfig(t_min=300, t_max=300, estimator=est),
                            generator=torch.Generator().manual_seed(seed))
            g(img, azimuth=torch.tensor([azimuth])).backward()
            grads[est, seed] = img.grad.clone()
    assert torch.equal(grads["authors", 1], grads["authors", 2])
    w = float(isd_weight(sigma_from_alphas_cumprod(sd15_alphas_cumprod())[300]))
    # the guidance draws t first (randint), then eps: replay both draws to get the injected noise
    eps = []
    for s in (1, 2):
        gen = torch.Generator().manual_seed(s)
        torch.randint(300, 301, (1,), generator=gen)
        eps.append(torch.randn(1, 3, 4, 4, generator=gen))
    diff = (grads["sds", 1] - grads["sds", 2]).movedim(-1, 1)
    assert torch.allclose(diff, -w * (eps[0] - eps[1]), atol=1e-5)
    # and the closed form of the authors' gradient
    p = ConstantPredictor()
    c = p.c if abs(azimuth) < 70 else p.c0
    expect = w * ((c - p.c0) + 49.0 * (c - p.u))
    assert torch.allclose(grads["authors", 1].movedim(-1, 1), expect, rtol=1e-5, atol=1e-6)


def test_authors_estimator_needs_the_no_id_prediction() -> None:
    class NoExtraRow(ToyPredictor):
        def predict_noise(self, x, sigma, views):
            p = super().predict_noise(x, sigma, views)
            return NoisePrediction(p.cond, p.uncond)

    g = ISDGuidance(NoExtraRow(torch.zeros(1, 3, 4, 4)))
    with pytest.raises(ValueError, match="cond_no_id"):
        g(torch.rand(1, 4, 4, 3), azimuth=torch.tensor([0.0]))
    g(torch.rand(1, 4, 4, 3), azimuth=torch.tensor([90.0]))  # no ID -> no extra row needed
    with pytest.raises(ValueError, match="estimator"):
        ISDConfig(estimator="vsd")


def test_isd_gradient_function_matches_the_cfg_formula() -> None:
    g = torch.Generator().manual_seed(3)
    c, u, c0, n = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(4))
    w = torch.tensor([0.3, 0.7]).view(2, 1, 1, 1)
    pred = NoisePrediction(c, u, c0)
    sel = torch.tensor([True, False])
    got = isd_gradient(pred, n, w, 50.0, "authors", sel)
    eps_hat = u + 50 * (c - u)
    assert torch.allclose(got[0], w[0] * (eps_hat[0] - c0[0]), atol=1e-4)
    assert torch.allclose(got[1], w[1] * (eps_hat[1] - c[1]), atol=1e-4)
    assert torch.allclose(isd_gradient(pred, n, w, 50.0, "sds"), w * (eps_hat - n), atol=1e-4)


# ----------------------------------------------------------------------------- VAE posterior sample
def test_vae_posterior_sample_statistics_and_gradient() -> None:
    """moments (mean m, logvar log 0.25): a sample has mean m and std 0.5; d z / d mean = 1,
    d z / d logvar = 0.5 * std * n for the drawn n (reparameterised); sample=False is the mean."""
    mean = torch.linspace(-1, 1, 4).view(1, 4, 1, 1).expand(2, 4, 64, 64).clone().requires_grad_(True)
    logvar = torch.full((2, 4, 64, 64), math.log(0.25), requires_grad=True)
    z = vae_posterior_latents(torch.cat([mean, logvar], 1), True, torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 64, 64)
    r = z.detach() - mean.detach()
    assert r.mean().abs() < 0.01 and abs(r.std().item() - 0.5) < 0.01
    n = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, mean + 0.5 * n, atol=1e-6)  # the generator's draw, reproducible
    z.sum().backward()
    assert torch.allclose(mean.grad, torch.ones_like(mean))
    assert torch.allclose(logvar.grad, 0.5 * 0.5 * n, atol=1e-6)
    m = vae_posterior_latents(torch.cat([mean, logvar], 1).detach(), sample=False)
    assert torch.equal(m, mean.detach())
    with pytest.raises(ValueError, match="2C"):
        vae_posterior_latents(torch.zeros(1, 3, 4, 4))
