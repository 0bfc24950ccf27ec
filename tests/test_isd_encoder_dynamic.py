"""ISD's VAE encoder is the pack's own, built from the VAE's state dict: its gradient equals a reference
encoder's with ComfyUI's static patcher and with a Dynamic VRAM stand-in (review F1).

Needs COMFYUI_PATH and ComfyUI's Python (skipped otherwise). CPU, tiny VAE.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tiny_models import tiny_vae, vae_ddconfig

pytestmark = pytest.mark.comfy

RES = 64


def _reference_encoder(sd: dict, cfg: dict) -> torch.nn.Module:
    """ComfyUI's own Encoder class + a plain quant_conv, constructed fresh and filled from ``sd``:
    an implementation independent of the pack's (core/sd_vae_encoder.py)."""
    from comfy.ldm.modules.diffusionmodules.model import Encoder

    class Ref(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder(**cfg)
            self.quant_conv = torch.nn.Conv2d(2 * cfg["z_channels"], 2 * cfg["z_channels"], 1)

        def forward(self, x):
            return self.quant_conv(self.encoder(x))

    ref = Ref()
    ref.load_state_dict({k: v for k, v in sd.items() if k.startswith(("encoder.", "quant_conv."))}, strict=True)
    return ref.requires_grad_(False)


def _reference_latents(ref, img: torch.Tensor, lf, seed: int) -> torch.Tensor:
    """process_in(mean + exp(logvar/2) * n), n ~ N(0,1) from a CPU generator of ``seed``."""
    mean, logvar = ref(img.movedim(-1, 1) * 2 - 1).float().chunk(2, 1)
    n = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return lf.process_in(mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * n)


def _grad(fn, img: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = img.clone().requires_grad_(True)
    z = fn(x)
    (z * probe).sum().backward()
    return z.detach(), x.grad


@pytest.mark.parametrize("loader", ["static", "dynamic"])
def test_isd_encoder_gradient_equals_reference(comfy_inprocess, loader: str) -> None:
    import comfy.latent_formats
    from dynamic_vram_standin import make_vae_dynamic

    from idsculpt.nodes.engines.vae_encoder import DifferentiableVAEEncoder

    lf = comfy.latent_formats.SD15()
    vae = tiny_vae(seed=11)
    sd = {k: v.detach().clone() for k, v in vae.first_stage_model.state_dict().items()}  # before any loading
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, RES, RES, 3, generator=g)
    probe = torch.randn(2, 4, RES // 8, RES // 8, generator=g)
    with torch.inference_mode(False):
        ref = _reference_encoder(sd, vae_ddconfig())
        z_ref, g_ref = _grad(lambda x: _reference_latents(ref, x, lf, seed=5), img, probe)
        standin = make_vae_dynamic(vae) if loader == "dynamic" else None
        try:
            if standin is not None:
                # the stand-in reproduces what breaks a copy of the live modules ...
                assert standin.force_loaded and any(hasattr(m, "_v") for m in vae.first_stage_model.modules())
                with pytest.raises(TypeError, match="HostBuffer"):
                    copy.deepcopy(vae.first_stage_model.encoder)
                # ... and what corrupts gradients through them: the live forward is right (each cast is
                # used at once), the backward reads weights later layers overwrote in the shared buffer
                fsm = vae.first_stage_model
                live = lambda x: _reference_latents(lambda y: fsm.quant_conv(fsm.encoder(y)), x, lf, 5)
                z_live, g_live = _grad(live, img, probe)
                assert torch.allclose(z_live, z_ref, atol=1e-4, rtol=1e-4)
                assert (g_live - g_ref).abs().max() > 1e-2 * g_ref.abs().max()
                assert standin.cast_buffer.casts > 0
            enc = DifferentiableVAEEncoder(vae, lf, torch.device("cpu"), torch.float32, generator=torch.Generator().manual_seed(5))
            z, grad = _grad(enc, img, probe)
            cast_before = standin.cast_buffer.casts if standin is not None else 0
            # the same graph again: ours never goes through the host's cast path
            _grad(DifferentiableVAEEncoder(vae, lf, torch.device("cpu"), torch.float32, generator=torch.Generator().manual_seed(5)),
                  img, probe)
            if standin is not None:
                assert standin.cast_buffer.casts == cast_before
        finally:
            if standin is not None:
                standin.unload()
    assert torch.allclose(z, z_ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(grad, g_ref, atol=1e-6, rtol=1e-4), (grad - g_ref).abs().max()
    assert grad.abs().sum() > 0
    # private weights: no parameter shares storage with the host's module
    host = {t.untyped_storage().data_ptr() for t in vae.first_stage_model.state_dict().values()}
    assert not any(p.untyped_storage().data_ptr() in host for p in enc.parameters())


def test_encoder_config_read_from_the_state_dict(comfy_inprocess) -> None:
    """SD1.5's full-size layout is recognised from shapes alone (ch 128, mult 1,2,4,4, 2 blocks, no
    per-level attention) and a non-SD state dict is refused by name."""
    import comfy.ldm.models.autoencoder as ae

    from idsculpt.core.sd_vae_encoder import EncoderConfig, SDVAEEncoder

    with torch.device("meta"):
        full = ae.AutoencoderKL(ddconfig=vae_ddconfig(full=True), embed_dim=4)
    cfg = EncoderConfig.from_state_dict(full.state_dict())
    assert cfg == EncoderConfig(in_channels=3, ch=128, level_channels=(128, 256, 512, 512), num_res_blocks=2,
                                attn_levels=(), out_channels=8, quant_channels=8)
    with torch.device("meta"):
        ours = SDVAEEncoder(cfg)
    want = {k for k in full.state_dict() if k.startswith(("encoder.", "quant_conv."))}
    assert set(ours.state_dict()) == want  # the same keys and shapes as ComfyUI's AutoencoderKL
    assert all(ours.state_dict()[k].shape == full.state_dict()[k].shape for k in want)
    with pytest.raises(ValueError, match="SD1.5-style VAE"):
        EncoderConfig.from_state_dict({"decoder.conv_in.weight": torch.zeros(1)})


def test_attention_forms_agree() -> None:
    """matmul_attention == SDPA == an explicit softmax(q^T k / sqrt(C)) v, and large maps fall back."""
    from idsculpt.core.sd_vae_encoder import matmul_attention, sdpa_attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 8, 4, 5, generator=g) for _ in range(3))
    qf, kf, vf = (t.reshape(2, 8, 20) for t in (q, k, v))
    w = torch.softmax(qf.transpose(1, 2) @ kf / 8 ** 0.5, -1)  # [B,N,N]
    expect = (vf @ w.transpose(1, 2)).reshape(q.shape)
    assert torch.allclose(matmul_attention(q, k, v), expect, atol=1e-6)
    assert torch.allclose(sdpa_attention(q, k, v), expect, atol=1e-5)
    calls = []
    out = matmul_attention(q, k, v, fallback=lambda *a: calls.append(1) or sdpa_attention(*a), max_tokens=10)
    assert calls == [1] and torch.allclose(out, expect, atol=1e-5)
