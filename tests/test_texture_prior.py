"""The trained texture prior of issue 22's sampler-step evidence (bench/texture_prior.py), on the CPU.

* ``sdedit_timesteps``: diffusers' DDIM "leading" timesteps with SD1.5's steps_offset 1 after the authors'
  ``num_train_timesteps = t`` (hand-computed values).
* ``sdedit_ddim``: known answer. For a point-mass data distribution at x0 the exact noise prediction at
  timestep s is eps(x, s) = (x − √ᾱ_s·x0)/√(1−ᾱ_s); DDIM's x0 estimate is then x0 at every step and the
  noise estimate is carried unchanged, so the result is √ᾱ_0·x0 + √(1−ᾱ_0)·ε₁ in closed form (ε₁ the first
  step's estimate, the input evaluated at the first timestep), whatever the step count.
* ``TrainedTextureDenoiser``: a refinement Denoiser (shapes, range, one UNet call of 2K rows per DDIM step);
  a few hundred training steps on renders of the known head make its SDEdit keep the true render.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import prior_model as M  # noqa: E402
import texture_prior as T  # noqa: E402

from idsculpt.core.camera import Cameras  # noqa: E402
from idsculpt.core.guidance import sd15_alphas_cumprod  # noqa: E402
from idsculpt.core.render.torch_backend import TorchBackend  # noqa: E402
from idsculpt.core.texture import RefineView, render_textured  # noqa: E402
from texture_oracle import degraded_texture, detailed_color, known_head  # noqa: E402
from torch_threads import one_thread  # noqa: E402,F401  (autouse: this module runs single-threaded)

BE = TorchBackend("cpu", walk_steps=0, background_silhouettes=False)


def test_sdedit_timesteps_follow_diffusers_leading_spacing_from_t() -> None:
    assert T.sdedit_timesteps(125, 20) == [i * 6 + 1 for i in range(19, -1, -1)]  # 115, 109, ..., 1
    assert T.sdedit_timesteps(199, 10) == [172, 153, 134, 115, 96, 77, 58, 39, 20, 1]
    assert T.sdedit_timesteps(50, 20) == [39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1]
    with pytest.raises(ValueError, match="cannot take"):
        T.sdedit_timesteps(10, 20)


@pytest.mark.parametrize("t,steps", [(50, 20), (125, 10), (199, 5), (180, 1)])
def test_sdedit_ddim_with_an_exact_point_mass_denoiser_has_the_closed_form(t: int, steps: int) -> None:
    g = torch.Generator().manual_seed(t + steps)
    x0 = torch.randn(2, 3, 8, 8, generator=g)
    noise = torch.randn(2, 3, 8, 8, generator=g)
    ac = sd15_alphas_cumprod().float()
    seen = []

    def exact_eps(x: torch.Tensor, s: int) -> torch.Tensor:
        seen.append(s)
        return (x - ac[s].sqrt() * x0) / (1 - ac[s]).sqrt()

    out = T.sdedit_ddim(exact_eps, x0, t, steps, noise)
    first = T.sdedit_timesteps(t, steps)[0]
    x_t = ac[t].sqrt() * x0 + (1 - ac[t]).sqrt() * noise
    eps1 = (x_t - ac[first].sqrt() * x0) / (1 - ac[first]).sqrt()
    expected = ac[0].sqrt() * x0 + (1 - ac[0]).sqrt() * eps1
    assert seen == T.sdedit_timesteps(t, steps)
    assert torch.allclose(out, expected, atol=1e-5)
    # a wrong last step (to ᾱ of timestep 0 vs a clean x0) or a skipped step would break it
    assert (out - x0).abs().max() > 1e-3


@pytest.fixture(scope="module")
def head():
    return known_head(256, subdiv=3, normalised=True, color=detailed_color)


def _latent_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).square().mean()))  # latents in [-1, 1]: peak-to-peak 2


def test_trained_texture_denoiser_is_a_refinement_denoiser_that_keeps_the_known_head(head) -> None:
    """200 steps of a 0.1 M-parameter prior on 96 renders (32², latents 16²). From t = 60 its SDEdit of the
    true render stays near it in latent space (measured 24.7 dB), where the untrained prior (eps = 0: the
    noise is never removed) lands 17.9 dB away. Targets are [K,H,W,3] in 0..1 from one UNet call per DDIM
    step. (Whether a trained prior restores a degraded render is the GPU-scale evidence's question; at this
    size the prior is too coarse to.)"""
    mesh, gt = head
    res, factor = 32, 2
    data = T.texture_dataset(gt, 96, res, factor, seed=0, backend=BE)
    assert data.latents.shape == (96, 3, 16, 16) and data.latents.min() >= -1 and data.latents.max() <= 1
    net = M.PriorUNet(M.PriorConfig(channels=(16, 32), blocks=1, emb=32, groups=4, attention=False))
    azs = (-30.0, 0.0, 90.0, 180.0)
    cams = [Cameras.orbit(10.0, az, 3.0, 37.5, res) for az in azs]
    views = [RefineView(c, 10.0, az, 3.0, 37.5) for c, az in zip(cams, azs)]
    truth, _ = render_textured(gt, gt.texture, Cameras.cat(cams), 1.0, BE)
    lat = T.encode_images(truth.color, factor)
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(1))

    def kept(model) -> float:
        den = T.TrainedTextureDenoiser(model, factor, steps=5, cfg=1.0, seed=0)
        return _latent_psnr(lat, den.restore_latents(lat, torch.tensor(azs), torch.full((4,), 10.0), 60, noise))

    untrained = kept(net)
    model, res_train = M.train_prior(data, net, M.TrainConfig(steps=200, batch=32, lr=2e-3, warmup=20, log_every=50,
                                                              eval_batch=64, bf16=False), "cpu", log=None)
    assert res_train.eval_end < 0.5 * res_train.eval_start
    trained = kept(model)
    assert untrained < 19.0 and trained > untrained + 5.0, (untrained, trained)
    den = T.TrainedTextureDenoiser(model, factor, steps=4, cfg=3.0, seed=0)
    bad, _ = render_textured(mesh, degraded_texture(gt.texture, seed=0), Cameras.cat(cams), 1.0, BE)
    out = den.denoise_batch(bad.color, bad.color, views, 120)
    assert out.shape == bad.color.shape and out.min() >= 0 and out.max() <= 1
    assert den.calls == 1 and den.model_calls == 4
    one = den.denoise(bad.color[1], bad.color[1], views[1], 120)
    assert one.shape == bad.color[1].shape and den.calls == 2 and den.model_calls == 8
