"""Tiny models in real formats for CPU tests (and the --smoke benchmarks).

Pure torch (importable anywhere):
  write_tiny_faceid_adapter(path, variant)  an IP-Adapter FaceID file in the public key layout.
ComfyUI-backed (call ``import_comfy()`` first; it skips the test when no ComfyUI is found):
  tiny_sd15_model()    SD1.5-shaped ``comfy.model_base.BaseModel`` in a ``ModelPatcher`` (MODEL)
  tiny_controlnet()    SD1.5-shaped ``comfy.controlnet.ControlNet`` (CONTROL_NET)
  tiny_vae()           ``comfy.sd.VAE`` around an SD-style AutoencoderKL (VAE), 8x downsampling
  tiny_conditioning()  a CONDITIONING list [[cross_attn [1,77,C], {}]]

The tiny UNet keeps SD1.5's block structure (4 levels, 2 res blocks, cross-attention in input blocks
1,2,4,5,7,8, the middle block and output blocks 3..11, one transformer each) at model_channels 32
and context width 64, so every block key, patch key and adapter layer key is the real one. ComfyUI
builds weights uninitialised (``disable_weight_init`` ops): ``init_weights`` fills them from a seed.
``full=True`` gives the real SD1.5 sizes (benchmarks).
"""
from __future__ import annotations

import os
import sys

import torch

TINY_CHANNELS = 32
TINY_CONTEXT = 64
SD15_CHANNEL_MULT = (1, 2, 4, 4)


# ----------------------------------------------------------------------------- pure torch
def write_tiny_faceid_adapter(
    path: str,
    variant: str = "faceid-portrait",
    cross_attention_dim: int = TINY_CONTEXT,
    model_channels: int = TINY_CHANNELS,
    id_embedding_dim: int = 512,
    seed: int = 0,
    scale: float = 1.0,
) -> str:
    """Write an IP-Adapter FaceID file (.bin or .safetensors by extension) in the public layout.

    variant: "faceid-portrait" (16 tokens, no LoRA, like ip-adapter-faceid-portrait-v11_sd15.bin) or
    "faceid" (4 tokens + LoRA tensors for all 32 attention processors, like ip-adapter-faceid_sd15.bin).
    ``scale`` multiplies the to_k_ip/to_v_ip weights (a strong adapter makes effects easy to see).
    """
    from idsculpt.core.face.id_adapter import IDAdapter, IDAdapterInfo, id_adapter_state_dict, sd15_layer_hidden

    tokens = {"faceid-portrait": 16, "faceid": 4}[variant]
    hidden = sd15_layer_hidden(model_channels, SD15_CHANNEL_MULT)
    info = IDAdapterInfo(variant, tokens, cross_attention_dim, id_embedding_dim, hidden, variant == "faceid")
    g = torch.Generator().manual_seed(seed)
    adapter = IDAdapter(info)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5 * (scale if "_ip" in name else 1.0))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    sd = id_adapter_state_dict(adapter)
    if variant == "faceid":  # LoRA of every processor (attn1 even, attn2 odd), rank 4 here (128 real)
        for i in range(32):
            h = hidden[str(i if i % 2 else i + 1)]
            for proj in ("q", "k", "v", "out"):
                cin = cross_attention_dim if (i % 2 and proj in "kv") else h
                sd["ip_adapter"][f"{i}.to_{proj}_lora.down.weight"] = torch.randn(4, cin, generator=g) * 0.01
                sd["ip_adapter"][f"{i}.to_{proj}_lora.up.weight"] = torch.zeros(h, 4)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        flat = {f"{top}.{k}": v for top, d in sd.items() for k, v in d.items()}
        save_file(flat, path)
    else:
        torch.save(sd, path)
    return path


def init_weights(module: torch.nn.Module, seed: int = 0, std_scale: float = 1.0) -> torch.nn.Module:
    """Deterministic random init for modules built with ComfyUI's uninitialised ops."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 2)
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (std_scale / fan_in**0.5))
            elif name.endswith("weight") and ("norm" in name or "ln" in leaf[-2]):
                p.copy_(torch.ones(p.shape) + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if b.dtype.is_floating_point and "running_var" in name:
                b.fill_(1.0)
    return module


# ----------------------------------------------------------------------------- ComfyUI
def comfy_path() -> str | None:
    """$COMFYUI_PATH, else <repo>/.comfy/ComfyUI (where tests/setup_comfyui.sh puts it), if it holds ComfyUI."""
    repo_comfy = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".comfy", "ComfyUI")
    for p in (os.environ.get("COMFYUI_PATH"), repo_comfy):
        if p and os.path.isfile(os.path.join(p, "comfy", "model_patcher.py")):
            return os.path.abspath(p)
    return None


def import_comfy(skip: bool = True):
    """Make ComfyUI importable in-process (CPU unless CUDA is present); pytest-skip when absent."""
    path = comfy_path()
    if path is None:
        if skip:
            import pytest

            pytest.skip("ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout (run with its venv)")
        raise RuntimeError("ComfyUI not found: set COMFYUI_PATH or pass --comfy")
    if path not in sys.path:
        sys.path.insert(0, path)  # first: the pack's nodes/ must not shadow ComfyUI's nodes.py
    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True
        import comfy.model_management  # noqa: F401
        import comfy.model_patcher  # noqa: F401
        import comfy.sample  # noqa: F401
        import comfy.samplers  # noqa: F401
        import comfy_api.latest  # noqa: F401
        import folder_paths  # noqa: F401
    except Exception as e:  # torchvision/torch mismatch, missing requirements, ...
        if skip:
            import pytest

            pytest.skip(f"ComfyUI at {path} is not importable with this Python ({type(e).__name__}: {e})")
        raise
    import comfy

    return comfy


def sd15_unet_config(full: bool = False, dtype: torch.dtype | None = None) -> dict:
    ch, ctx = (320, 768) if full else (TINY_CHANNELS, TINY_CONTEXT)
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "dtype": dtype, "in_channels": 4, "model_channels": ch,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": list(SD15_CHANNEL_MULT), "transformer_depth_middle": 1,
        "use_linear_in_transformer": False, "context_dim": ctx, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def tiny_sd15_model(seed: int = 0, full: bool = False, dtype: torch.dtype = torch.float32, device=None):
    """An SD1.5-shaped MODEL (ModelPatcher around comfy.model_base.BaseModel, EPS prediction)."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    cfg = sd15_unet_config(full, dtype)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(dtype, None)
    model = comfy.model_base.BaseModel(model_config, device="cpu")
    init_weights(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    load = device or mm.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load, offload_device=mm.unet_offload_device())


def tiny_controlnet(seed: int = 1, full: bool = False, dtype: torch.dtype = torch.float32):
    """An SD1.5 ControlNet (cldm) with random weights -- zero convs included, so it does something."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops

    cfg = sd15_unet_config(full, dtype)
    cfg.pop("out_channels")
    cfg.update(hint_channels=3, operations=comfy.ops.disable_weight_init, device="cpu")
    net = comfy.cldm.cldm.ControlNet(**cfg)
    init_weights(net, seed)
    net.to(dtype)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device(), manual_cast_dtype=None)


def vae_ddconfig(full: bool = False) -> dict:
    if full:
        return {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    return {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def tiny_vae(seed: int = 2, full: bool = False, dtype: torch.dtype | None = None):
    """A ComfyUI VAE (AutoencoderKL, 4 latent channels, 8x downsampling) with random weights."""
    import comfy.ldm.models.autoencoder as ae
    import comfy.sd

    params = {"embed_dim": 4, "ddconfig": vae_ddconfig(full)}
    src = init_weights(ae.AutoencoderKL(**params), seed, std_scale=0.5)
    return comfy.sd.VAE(sd=src.state_dict(), config={"params": params}, dtype=dtype)


def tiny_conditioning(seed: int = 3, tokens: int = 77, width: int = TINY_CONTEXT, batch: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, width, generator=g), {}]]
