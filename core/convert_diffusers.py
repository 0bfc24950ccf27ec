"""A diffusers SD1.5 folder (unet/, vae/, text_encoder/) -> one single-file checkpoint in the original
LDM key layout, the file ComfyUI's ``CheckpointLoaderSimple`` loads.

HumanNorm's normal- and depth-adapted SD1.5 (and Realistic Vision on the hub) are published as
diffusers folders; ComfyUI's checkpoint loader reads the LDM layout. The key maps are ComfyUI's own
(``comfy.utils.unet_to_diffusers`` for the UNet, ``comfy.diffusers_convert.convert_vae_state_dict``
for the VAE): core never imports ComfyUI, so the caller passes them in (scripts/install_models.py
does). The CLIP-L text encoder needs no renaming: an SD1.5 checkpoint keeps transformers' own names
under ``cond_stage_model.transformer.``.

Every source tensor must land somewhere: a key the map does not know is an error, not a silent drop
(a checkpoint missing a UNet weight would load with ComfyUI's uninitialised weights).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Optional

#: file names a diffusers component may use, in the order ComfyUI's DiffusersLoader tries them
WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
             "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin"),
}
CLIP_TOP_LEVEL = ("embeddings", "encoder", "final_layer_norm")
UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."

UnetKeyMap = Callable[[dict], Mapping[str, str]]  # comfy.utils.unet_to_diffusers: LDM config -> {diffusers key: LDM key}
VaeConvert = Callable[[dict], dict]  # comfy.diffusers_convert.convert_vae_state_dict


def _as_list(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_config_from_diffusers(config: Mapping) -> dict:
    """The LDM UNet layout fields ``unet_to_diffusers`` reads, from a diffusers ``unet/config.json``.

    Down level i has ``layers_per_block`` res blocks, each followed by ``transformer_layers_per_block``
    transformers when the level is a CrossAttn block; up level i has one res block more. ComfyUI's map
    consumes ``transformer_depth_output`` from its end while walking the up blocks from the lowest
    resolution, so the list is stored reversed (as ComfyUI's model configs store it).
    """
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    block_out = list(config["block_out_channels"])
    n = len(block_out)
    if len(down) != n or len(up) != n:
        raise ValueError(f"unet/config.json: {len(down)} down / {len(up)} up block types for {n} levels")
    layers = _as_list(config.get("layers_per_block", 2), n)
    tdepth = _as_list(config.get("transformer_layers_per_block", 1), n)
    depth_in: list[int] = []
    for i, kind in enumerate(down):
        depth_in += [int(tdepth[i]) if "CrossAttn" in kind else 0] * int(layers[i])
    depth_up: list[int] = []
    rev_layers, rev_tdepth = layers[::-1], tdepth[::-1]
    for i, kind in enumerate(up):
        depth_up += [int(rev_tdepth[i]) if "CrossAttn" in kind else 0] * (int(rev_layers[i]) + 1)
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn") or ""
    return {
        "num_res_blocks": [int(x) for x in layers],
        "channel_mult": [c // block_out[0] for c in block_out],
        "transformer_depth": depth_in,
        "transformer_depth_output": depth_up[::-1],
        "transformer_depth_middle": int(tdepth[-1]) if "CrossAttn" in mid else 0,
    }


def read_weights(path: str) -> dict:
    """Tensors of a .safetensors file or a torch pickle (read with ``weights_only=True``: no code runs)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return sd


def find_weights(folder: str, component: str) -> str:
    for name in WEIGHT_NAMES[component]:
        p = os.path.join(folder, component, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"{folder}/{component}/ holds none of {', '.join(WEIGHT_NAMES[component])}")


def convert_sd15(unet_sd: Mapping, vae_sd: Mapping, text_sd: Mapping, unet_config: Mapping,
                 unet_key_map: UnetKeyMap, vae_convert: VaeConvert) -> dict:
    """One LDM-layout state dict from the three diffusers state dicts."""
    key_map = unet_key_map(unet_config_from_diffusers(unet_config))
    out: dict = {}
    unknown = [k for k in unet_sd if k not in key_map]
    if unknown:
        raise ValueError(f"the UNet has {len(unknown)} weight(s) ComfyUI's SD1.5 key map does not place "
                         f"(first: {unknown[:3]}): not an SD1.5-shaped diffusers UNet")
    for k, v in unet_sd.items():
        out[UNET_PREFIX + key_map[k]] = v
    for k, v in vae_convert(dict(vae_sd)).items():
        out[VAE_PREFIX + k] = v
    for k, v in text_sd.items():
        # transformers' CLIPTextModel keys are "text_model.*", exactly what SD1.5 checkpoints carry;
        # transformers 5 writes them without the "text_model." level
        if k.split(".", 1)[0] in CLIP_TOP_LEVEL:
            k = "text_model." + k
        if not k.startswith("text_model."):
            raise ValueError(f"text encoder weight {k!r} is not a CLIPTextModel key (text_model.*)")
        out[CLIP_PREFIX + k] = v
    return out


def _independent(sd: dict) -> dict:
    """safetensors refuses tensors sharing memory (reshaped views, tied weights): copy the repeats."""
    seen: set = set()
    out = {}
    for k, v in sd.items():
        v = v.contiguous()
        ptr = v.untyped_storage().data_ptr()
        if v.numel() and ptr in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def convert_files(unet: str, vae: str, text_encoder: str, unet_config: str, out_path: str, unet_key_map: UnetKeyMap,
                  vae_convert: VaeConvert, metadata: Optional[dict] = None) -> str:
    """Convert the three component weight files (+ ``unet/config.json``) and write ``out_path``
    (.safetensors) atomically; tensors keep their stored dtype. Returns ``out_path``."""
    from safetensors.torch import save_file

    with open(unet_config, encoding="utf-8") as fh:
        config = json.load(fh)
    sd = convert_sd15(read_weights(unet), read_weights(vae), read_weights(text_encoder), config, unet_key_map, vae_convert)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".part"
    save_file(_independent(sd), tmp, metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, out_path)
    return out_path


def convert_folder(folder: str, out_path: str, unet_key_map: UnetKeyMap, vae_convert: VaeConvert,
                   metadata: Optional[dict] = None) -> str:
    """Convert a diffusers SD1.5 folder (the weight names ComfyUI's DiffusersLoader accepts)."""
    return convert_files(find_weights(folder, "unet"), find_weights(folder, "vae"), find_weights(folder, "text_encoder"),
                         os.path.join(folder, "unet", "config.json"), out_path, unet_key_map, vae_convert, metadata)
