"""Write random-weight stand-ins for every model the workflows load, in the real formats and layout.

    <ComfyUI python> tests/build_test_models.py --models-dir MODELS_DIR [--size full|small]
        [--seed 0] [--only normal_sd15,controlnet_canny,...] [--comfyui PATH] [--force]

What it writes (keys = core/models.py table keys; file names = the table's canonical names, under
``<models-dir>/<ComfyUI folder key>/``):

* SD1.5 checkpoints (normal_sd15, depth_sd15, texture_sd15) in the original LDM single-file layout:
  ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (AutoencoderKL), ``cond_stage_model.
  transformer.text_model.*`` (CLIP-L), fp16 safetensors. Built from ComfyUI's own classes
  (openaimodel.UNetModel, autoencoder.AutoencoderKL, sd1_clip.SDClipModel) at the real config, so
  every key and shape is what ``CheckpointLoaderSimple`` expects and it detects the file as SD15.
* ControlNets (controlnet_canny, controlnet_normalbae, controlnet_mediapipe_face): ComfyUI's
  ``cldm.ControlNet`` at the SD1.5 config, keys prefixed ``control_model.`` as in the public files,
  fp16, under the official names (lllyasviel's v1.1 ``.pth`` pickles, CrucibleAI's ``.safetensors``);
  ``comfy.controlnet.load_controlnet`` detects them.
* ID adapter: ``ip-adapter-faceid-portrait-v11_sd15.bin`` (``{"image_proj", "ip_adapter"}``
  torch pickle, the public layout; hidden widths match the UNet written here).
* insightface ``buffalo_l``: det_10g.onnx (planted SCRFD detector: one face, centred) and
  w600k_r50.onnx (random ArcFace-shaped recogniser), from tests/tiny_insightface.py.
* PanoHead: a TriPlaneGenerator as a release-format pickle (``easy-khair-...pkl``, written by
  tests/panohead_fixtures.py; converted to .safetensors + .json on first load) -- random weights,
  its density is not a head.
* VGG16: torchvision ``features.N.*`` layout (vgg16-397923af.pth).
* VAE (vae_ft_mse): the SD1.5 AutoencoderKL alone, LDM keys.
* RealESRGAN x2 (realesrgan_x2): BasicSR RRDBNet keys in ``{"params_ema": ...}`` (RealESRGAN_x2plus.pth),
  loaded by ComfyUI's UpscaleModelLoader (spandrel); 23 blocks, 2 with ``--size small``.

Sizes. ComfyUI recognises an SD1.5 UNet / ControlNet by ``model_channels == 320`` and
``context_dim == 768`` (supported_models.SD15.unet_config); block counts and channel multipliers are
read from the state dict (model_detection.detect_unet_config). So ``--size small`` keeps 320/768 and
SD1.5's block structure (same block indices, same 16 cross-attention layers) but uses channel_mult
(1, 1, 1, 1): ComfyUI still detects SD15 and loads it, at a fraction of the size. The VAE and CLIP-L
configs are fixed in ComfyUI (not read from the file), so both stay full size in every variant.
Smaller model_channels is NOT detected as SD1.5 ("Could not detect model type").

One seed (``--seed``) drives everything: each model gets ``seed + <fixed offset>`` so files are
reproducible and models differ from one another. Existing files are skipped unless ``--force``.

Needs a Python that can import ComfyUI (its venv) and the pack's core (this repo): the script puts
both on sys.path itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SIZES = ("full", "small")
SD15_MULT = {"full": (1, 2, 4, 4), "small": (1, 1, 1, 1)}
#: fixed per-model seed offsets (so adding a model never changes another's weights)
SEED_OFFSET = {"normal_sd15": 0, "depth_sd15": 100, "texture_sd15": 200, "vae_ft_mse": 300, "controlnet_canny": 400,
               "controlnet_normalbae": 500, "controlnet_mediapipe_face": 600, "id_adapter": 700, "insightface": 800,
               "panohead": 900, "vgg16": 1000, "realesrgan_x2": 1100}
#: which table keys each builder covers (insightface writes two table entries)
COVERS = {"insightface": ("insightface_det", "insightface_rec")}
DEFAULT_KEYS = tuple(SEED_OFFSET)


# --------------------------------------------------------------------------- imports
def _ensure_pack() -> None:
    """Make the repo importable as ``idsculpt`` (as tests/conftest.py does) and tests/ importable."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    if "idsculpt" in sys.modules:
        return
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import _pack  # bench/_pack.py: the one loader of the repo as package ``idsculpt``

    _pack.load()


def _ensure_comfy(comfy_path: Optional[str]) -> None:
    if comfy_path:
        os.environ.setdefault("COMFYUI_PATH", comfy_path)
    _ensure_pack()
    import tiny_models

    tiny_models.import_comfy(skip=False)


# --------------------------------------------------------------------------- weights
def init_weights(module: torch.nn.Module, seed: int, std_scale: float = 1.0) -> torch.nn.Module:
    """Fan-in scaled Gaussian weights, ~1 norm scales, small biases (the tests/tiny_models recipe).

    Draws in float32 one parameter at a time (the module may be fp16: copy_ casts), so a full UNet
    never needs a second fp32 copy in memory."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (std_scale / fan_in ** 0.5))
            elif name.endswith("weight") and ("norm" in name or "ln" in name.rsplit(".", 2)[-2]):
                p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return module


def sd15_unet_config(size: str) -> dict:
    """SD1.5's UNet config (ComfyUI's openaimodel kwargs); ``small`` only changes channel_mult."""
    return {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": list(SD15_MULT[size]), "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
        "context_dim": 768, "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "use_linear_in_transformer": False, "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _half(sd: dict, prefix: str = "") -> dict:
    return {prefix + k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous() for k, v in sd.items()}


def unet_state_dict(size: str, seed: int) -> dict:
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops

    net = oai.UNetModel(**sd15_unet_config(size), dtype=torch.float16, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights(net, seed)
    sd = _half(net.state_dict())
    del net
    return sd


def vae_state_dict(seed: int) -> dict:
    import comfy.ldm.models.autoencoder as ae

    net = ae.AutoencoderKL(embed_dim=4, ddconfig=dict(VAE_DDCONFIG))
    init_weights(net, seed, std_scale=0.5)
    return _half(net.state_dict())


def clip_l_state_dict(seed: int) -> dict:
    """CLIP-L text encoder (ComfyUI's sd1_clip config) in the LDM layout: ``transformer.text_model.*``
    (SD1.5 checkpoints carry neither text_projection nor logit_scale)."""
    import comfy.sd1_clip

    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float16)
    init_weights(clip.transformer, seed)
    with torch.no_grad():  # token/position embeddings: unit-ish scale as CLIP's (~0.01-0.02 std is real; keep finite)
        emb = clip.transformer.text_model.embeddings
        g = torch.Generator().manual_seed(seed + 1)
        emb.token_embedding.weight.copy_(0.02 * torch.randn(emb.token_embedding.weight.shape, generator=g))
        emb.position_embedding.weight.copy_(0.01 * torch.randn(emb.position_embedding.weight.shape, generator=g))
    sd = {k: v for k, v in clip.transformer.state_dict().items() if not k.startswith("text_projection")}
    return _half(sd, "transformer.")


def write_sd15_checkpoint(path: str, size: str, seed: int) -> str:
    from safetensors.torch import save_file

    sd = unet_state_dict(size, seed)
    full = {"model.diffusion_model." + k: v for k, v in sd.items()}
    del sd
    full.update(_half(vae_state_dict(seed + 1), "first_stage_model."))
    full.update(_half(clip_l_state_dict(seed + 2), "cond_stage_model."))
    _save(save_file, full, path, {"format": "pt", "idsculpt_test_model": f"sd15-{size}"})
    return path


def write_vae(path: str, seed: int) -> str:
    from safetensors.torch import save_file

    _save(save_file, vae_state_dict(seed), path, {"format": "pt", "idsculpt_test_model": "sd15-vae"})
    return path


def write_controlnet(path: str, size: str, seed: int) -> str:
    import comfy.cldm.cldm
    import comfy.ops
    from safetensors.torch import save_file

    cfg = sd15_unet_config(size)
    cfg.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float16, device="cpu", operations=comfy.ops.disable_weight_init, **cfg)
    init_weights(net, seed)
    sd = _half(net.state_dict(), "control_model.")
    if path.endswith(".safetensors"):
        _save(save_file, sd, path, {"format": "pt", "idsculpt_test_model": f"controlnet-sd15-{size}"})
    else:  # lllyasviel's v1.1 .pth: a pickled state dict (ComfyUI picks the reader by extension)
        _save(lambda obj, p, metadata=None: torch.save(obj, p), sd, path)
    return path


def write_id_adapter(path: str, size: str, seed: int) -> str:
    """IP-Adapter FaceID Portrait (16 tokens, no LoRA) whose per-layer widths match the UNet of ``size``."""
    _ensure_pack()
    from idsculpt.core.face.id_adapter import IDAdapter, IDAdapterInfo, id_adapter_state_dict, sd15_layer_hidden

    hidden = sd15_layer_hidden(320, SD15_MULT[size])
    adapter = IDAdapter(IDAdapterInfo("faceid-portrait", 16, 768, 512, hidden, False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    sd = id_adapter_state_dict(adapter)
    _save(lambda obj, p, metadata=None: torch.save(obj, p), sd, path)
    return path


def write_insightface(root: str, seed: int) -> str:
    _ensure_pack()
    from tiny_insightface import write_tiny_insightface

    return write_tiny_insightface(root, "buffalo_l", seed=seed)


#: stands in for the module source a release pickle carries; our loader never runs it (and this
#: raises if anything ever did)
PICKLE_MODULE_SRC = "raise RuntimeError('IDSculpt test stand-in: code stored in a PanoHead pickle must never run')\n"


def write_panohead(path: str, seed: int, size: str = "small") -> str:
    """A TriPlaneGenerator as a release-format pickle (``easy-khair-...pkl``: persistence objects
    carrying module source, tests/panohead_fixtures.py), which core.panohead.checkpoint converts
    to .safetensors + .json beside it on first load, like the real release. ``full``: the release's
    configuration (53.7 M parameters, for GPU timing); ``small``: the tiny test configuration."""
    _ensure_pack()
    from idsculpt.core.panohead.triplane import release_config, tiny_config
    from panohead_fixtures import dump_release_pickle, stand_in_generator, tiny_generator

    if size == "full":
        blob = dump_release_pickle(stand_in_generator(release_config(), seed), release_config(), PICKLE_MODULE_SRC)
    else:
        blob = dump_release_pickle(tiny_generator(seed), tiny_config(), PICKLE_MODULE_SRC)

    def write(obj, p, metadata=None):
        with open(p, "wb") as fh:
            fh.write(obj)

    _save(write, blob, path)
    return path


def write_vgg16(path: str, seed: int) -> str:
    _ensure_pack()
    from idsculpt.core.panohead.perceptual import VGG16Perceptual

    net = VGG16Perceptual()
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in net.features.named_parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        sd["features." + name] = (torch.randn(p.shape, generator=g) * ((2.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.01)).contiguous()
    _save(lambda obj, p, metadata=None: torch.save(obj, p), sd, path)
    return path


class _RDB(torch.nn.Module):
    """BasicSR ResidualDenseBlock: five 3x3 convs, each seeing the block input + all earlier outputs."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        for i in range(4):
            setattr(self, f"conv{i + 1}", torch.nn.Conv2d(nf + i * gc, gc, 3, padding=1))
        self.conv5 = torch.nn.Conv2d(nf + 4 * gc, nf, 3, padding=1)


class _RRDB(torch.nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _RDB(nf, gc), _RDB(nf, gc), _RDB(nf, gc)


class RRDBNetX2(torch.nn.Module):
    """Parameter layout of BasicSR's RRDBNet at scale 2 (RealESRGAN_x2plus): the input is
    pixel-unshuffled by 2, so conv_first takes 3*4 channels. Only the layout matters here: ComfyUI's
    UpscaleModelLoader (spandrel) rebuilds and runs the network from the state dict."""

    def __init__(self, num_block: int = 23, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.conv_first = torch.nn.Conv2d(3 * 4, nf, 3, padding=1)
        self.body = torch.nn.Sequential(*[_RRDB(nf, gc) for _ in range(num_block)])
        for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
            setattr(self, name, torch.nn.Conv2d(nf, nf, 3, padding=1))
        self.conv_last = torch.nn.Conv2d(nf, 3, 3, padding=1)


def write_realesrgan_x2(path: str, size: str, seed: int) -> str:
    """``RealESRGAN_x2plus.pth`` layout: ``{"params_ema": state_dict}`` (23 RRDB blocks; 2 when small)."""
    net = RRDBNetX2(23 if size == "full" else 2)
    init_weights(net, seed, std_scale=0.2)  # small residual branches keep the random net's output bounded
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    _save(lambda obj, p, metadata=None: torch.save(obj, p), {"params_ema": sd}, path)
    return path


def _save(writer: Callable, obj, path: str, metadata: Optional[dict] = None) -> None:
    """Write to ``<path>.part`` then rename, so an interrupted build never leaves a truncated model
    that a later run would skip as existing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    if metadata is not None:
        writer(obj, part, metadata=metadata)
    else:
        writer(obj, part)
    os.replace(part, path)


# --------------------------------------------------------------------------- driver
def target_path(models_dir: str, key: str) -> str:
    """Where model ``key`` goes: the table's canonical location (insightface: its pack folder)."""
    _ensure_pack()
    from idsculpt.core.models import get_spec

    if key == "insightface":
        return os.path.join(models_dir, "insightface", "models", "buffalo_l")
    spec = get_spec(key)
    return os.path.join(models_dir, spec.folder, *spec.filename.split("/"))


def _exists(key: str, path: str) -> bool:
    if key == "insightface":
        return all(os.path.isfile(os.path.join(path, n)) for n in ("det_10g.onnx", "w600k_r50.onnx"))
    return os.path.isfile(path)


def build(models_dir: str, keys=DEFAULT_KEYS, size: str = "full", seed: int = 0, force: bool = False,
          log: Callable[[str], None] = print) -> dict[str, str]:
    """Write the selected stand-ins under ``models_dir``; returns key -> path (built or already there)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    unknown = set(keys) - set(DEFAULT_KEYS)
    if unknown:
        raise ValueError(f"unknown model key(s) {sorted(unknown)}; known: {', '.join(DEFAULT_KEYS)}")
    out = {}
    for key in keys:
        path = target_path(models_dir, key)
        out[key] = path
        if _exists(key, path) and not force:
            log(f"skip  {key}: {path} exists")
            continue
        s = seed + SEED_OFFSET[key]
        t0 = time.perf_counter()
        if key in ("normal_sd15", "depth_sd15", "texture_sd15"):
            write_sd15_checkpoint(path, size, s)
        elif key == "vae_ft_mse":
            write_vae(path, s)
        elif key.startswith("controlnet_"):
            write_controlnet(path, size, s)
        elif key == "id_adapter":
            write_id_adapter(path, size, s)
        elif key == "insightface":
            write_insightface(os.path.join(models_dir, "insightface"), s)
        elif key == "panohead":
            write_panohead(path, s, size)
        elif key == "vgg16":
            write_vgg16(path, s)
        elif key == "realesrgan_x2":
            write_realesrgan_x2(path, size, s)
        size_mb = _size_mb(path)
        log(f"wrote {key}: {path} ({size_mb:.0f} MB, {time.perf_counter() - t0:.1f} s)")
    return out


def _size_mb(path: str) -> float:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2 ** 20
    return os.path.getsize(path) / 2 ** 20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", required=True, help="target models/ dir (subfolders checkpoints/, controlnet/, ... are created)")
    ap.add_argument("--size", choices=SIZES, default="full", help="full: real SD1.5 sizes (~2 GB per checkpoint, fp16); "
                    "small: SD1.5-detectable with channel_mult 1,1,1,1 (see the module docstring)")
    ap.add_argument("--seed", type=int, default=0, help="one seed for every model (each adds a fixed offset)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(DEFAULT_KEYS)}")
    ap.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH, else <repo>/.comfy/ComfyUI)")
    ap.add_argument("--force", action="store_true", help="overwrite files that exist")
    args = ap.parse_args(argv)
    keys = tuple(k for k in args.only.split(",") if k) or DEFAULT_KEYS
    try:
        _ensure_comfy(args.comfyui)
        build(os.path.abspath(args.models_dir), keys, args.size, args.seed, args.force)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
