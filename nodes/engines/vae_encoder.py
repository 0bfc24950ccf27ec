"""The ISD's render -> latent step on a ComfyUI VAE, with autograd: the pack's own encoder built from the VAE's
weights (never ComfyUI's live modules), a posterior sample (the authors') or its mean, scaled by the model's
latent format."""
from __future__ import annotations

import torch

from ...core.guidance import vae_posterior_latents
from ...core.sd_vae_encoder import SDVAEEncoder

#: "sample": z = mean + std * noise (the authors' posterior.sample()); "mean": ComfyUI's VAE encode.
VAE_POSTERIORS = ("sample", "mean")


class DifferentiableVAEEncoder(torch.nn.Module):
    """Image [B,H,W,3] 0..1 -> model-space latents, with autograd, from a ComfyUI VAE.

    The encoder (+ ``quant_conv``) is the pack's own plain-PyTorch module (core.sd_vae_encoder), built
    from the VAE's state dict (``vae.get_sd()``, public in every ComfyUI release) with private copies of
    the weights. ComfyUI's live modules are never copied or run: under Dynamic VRAM they keep their
    weights off the GPU, carry native pinned-memory handles and cast weights per forward into shared
    buffers, so a copy could not be made or would back-propagate through overwritten weights. The
    diagonal Gaussian posterior becomes latents and the latent format's scale/shift is applied.
    posterior: "sample" (default; mean + std * noise, reparameterised, noise from ``generator``: the
    authors' ``posterior.sample()``) or "mean" (what ComfyUI's VAE encode returns). ``encoder``: a
    prebuilt module image [-1,1] -> moments (tests), instead of one built from the VAE.
    """

    def __init__(self, vae, latent_format, device: torch.device, dtype: torch.dtype | None = None, math_attention: bool = True,
                 posterior: str = "sample", generator: torch.Generator | None = None, encoder: torch.nn.Module | None = None):
        super().__init__()
        if posterior not in VAE_POSTERIORS:
            raise ValueError(f"VAE posterior must be one of {VAE_POSTERIORS}, got {posterior!r}")
        self.posterior, self.generator = posterior, generator
        dtype = dtype or getattr(vae, "vae_dtype", torch.float32)
        if encoder is None:
            # math_attention: the mid-block self-attention runs as matmul + softmax, whose backward is
            # far cheaper than the memory-efficient kernel PyTorch picks for a 512-wide head.
            encoder = SDVAEEncoder.from_state_dict(vae_state_dict(vae), device, dtype, math_attention=math_attention)
        self.net = encoder.requires_grad_(False).eval()
        self.process_input = getattr(vae, "process_input", lambda im: im * 2.0 - 1.0)
        self.latent_format = latent_format
        self.dtype, self.device = dtype, device
        self.latent_channels = int(getattr(vae, "latent_channels", 4))

    @property
    def encoder(self) -> torch.nn.Module:
        """The encoder trunk (its attention blocks expose ``optimized_attention``, as ComfyUI's do)."""
        return getattr(self.net, "encoder", self.net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.process_input(images.movedim(-1, 1)).to(device=self.device, dtype=self.dtype)
        z = self.net(x)
        if z.shape[1] == 2 * self.latent_channels:  # diagonal Gaussian moments (mean, log-variance)
            z = vae_posterior_latents(z, self.posterior == "sample", self.generator)
        return self.latent_format.process_in(z.float())


def vae_state_dict(vae) -> dict:
    """The VAE's weights through public calls: ``VAE.get_sd()`` (ComfyUI 0.3.x to today), else the
    patcher's ``model_state_dict()``. The tensors may be the host's own (CPU, pinned, inference
    tensors): callers copy them (SDVAEEncoder.from_state_dict does)."""
    for get in (getattr(vae, "get_sd", None), getattr(getattr(vae, "patcher", None), "model_state_dict", None)):
        if callable(get):
            sd = get()
            if sd:
                return sd
    raise ValueError(f"cannot read the weights of this VAE ({type(vae).__name__}): it has neither get_sd() nor a patcher "
                     "with model_state_dict(); ISD needs an SD1.5 VAE loaded by ComfyUI")

