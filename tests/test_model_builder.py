"""tests/build_test_models.py writes models that ComfyUI's own loaders recognise.

Built files are cached (the builder skips what exists, seeds are fixed) in
``$IDSCULPT_TEST_MODELS_DIR/<size>`` (default ``tests/output/test_models/<size>``), so only the first
run pays the build (~1.5 min for the small set on the 2-core machine, ~1 GB: the VAE and CLIP-L are
full size in every variant). The full-size SD1.5 test (2 GB checkpoint + 0.7 GB ControlNet) runs only
with ``IDSCULPT_TEST_FULL_MODELS=1``.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from idsculpt.core import models as M

pytestmark = [pytest.mark.comfy, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDER = os.path.join(ROOT, "tests", "build_test_models.py")
CONTROLNETS = ("controlnet_canny", "controlnet_normalbae", "controlnet_mediapipe_face")
SMALL_KEYS = ("normal_sd15", *CONTROLNETS, "id_adapter", "insightface", "panohead", "vgg16", "realesrgan_x2")
FULL_KEYS = ("normal_sd15", "controlnet_canny")


def _cache_dir(size: str) -> str:
    base = os.environ.get("IDSCULPT_TEST_MODELS_DIR") or os.path.join(ROOT, "tests", "output", "test_models")
    return os.path.join(base, size)


def _build(comfy_path: str, comfy_python: str, size: str, keys) -> str:
    d = _cache_dir(size)
    r = subprocess.run([comfy_python, BUILDER, "--models-dir", d, "--size", size, "--comfyui", comfy_path, "--only", ",".join(keys)],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def small_models(comfy_path, comfy_python) -> str:
    return _build(comfy_path, comfy_python, "small", SMALL_KEYS)


def test_builder_layout_matches_table_and_skips_existing(small_models, comfy_path, comfy_python):
    rows = {r.spec.key: r for r in M.check_models(lambda k: [os.path.join(small_models, k)], "all")}
    for key in ("normal_sd15", *CONTROLNETS, "id_adapter", "insightface_det", "insightface_rec", "panohead", "vgg16", "realesrgan_x2"):
        assert rows[key].present, key
    # the canonical file names, as users download them
    assert os.path.basename(rows["id_adapter"].path) == "ip-adapter-faceid-portrait-v11_sd15.bin"
    before = os.stat(rows["normal_sd15"].path).st_mtime_ns
    r = subprocess.run([comfy_python, BUILDER, "--models-dir", small_models, "--size", "small", "--comfyui", comfy_path,
                        "--only", "normal_sd15"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "skip  normal_sd15" in r.stdout, r.stdout + r.stderr
    assert os.stat(rows["normal_sd15"].path).st_mtime_ns == before
    r = subprocess.run([comfy_python, BUILDER, "--models-dir", small_models, "--only", "nope"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown model key" in r.stderr


def test_builder_panohead_and_vgg_load_with_our_loaders(small_models):
    import torch

    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.core.panohead.checkpoint import load_generator
    from idsculpt.core.panohead.perceptual import load_vgg16

    pkl = os.path.join(small_models, "idsculpt", "easy-khair-180-gpc0.8-trans10-025000.pkl")
    with open(pkl, "rb") as fh:
        assert b"must never run" in fh.read()  # release format: persistence objects carrying module source
    convert_dir = os.path.join(small_models, "idsculpt_converted")  # the cache stays a pristine release layout
    g = load_generator(pkl, convert_dir=convert_dir)
    assert g.neural_rendering_resolution == 32
    assert os.path.isfile(os.path.join(convert_dir, "easy-khair-180-gpc0.8-trans10-025000.safetensors"))
    vgg = load_vgg16(os.path.join(small_models, "idsculpt", "vgg16-397923af.pth"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(vgg(x, x)) == 0.0 and float(vgg(x, -x)) > 0.0
    adapter = load_id_adapter(os.path.join(small_models, "ipadapter", "ip-adapter-faceid-portrait-v11_sd15.bin"))
    assert adapter.info.num_tokens == 16 and adapter.info.cross_attention_dim == 768


def test_builder_keys_are_the_public_layout(small_models):
    from safetensors import safe_open

    import torch

    with safe_open(os.path.join(small_models, "checkpoints", "normal-adapted-sd1.5.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").shape == (320, 4, 3, 3)
        assert f.get_tensor("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").shape == (320, 768)
        assert f.get_tensor("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight").shape == (49408, 768)
        assert f.get_tensor("first_stage_model.decoder.conv_in.weight").shape == (512, 4, 3, 3)
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    assert not any(k.startswith("cond_stage_model.transformer.text_projection") for k in keys)
    ck = set(torch.load(os.path.join(small_models, "controlnet", "control_v11p_sd15_canny.pth"), weights_only=True))
    with safe_open(os.path.join(small_models, "controlnet", "control_v2p_sd15_mediapipe_face.safetensors"), "pt") as f:
        assert set(f.keys()) == ck
    assert "control_model.zero_convs.0.0.weight" in ck and "control_model.input_hint_block.0.weight" in ck
    assert "control_model.middle_block_out.0.weight" in ck
    sd = torch.load(os.path.join(small_models, "ipadapter", "ip-adapter-faceid-portrait-v11_sd15.bin"), weights_only=True)
    assert set(sd) == {"image_proj", "ip_adapter"}
    assert sd["image_proj"]["proj.0.weight"].shape == (1024, 512)
    assert sd["image_proj"]["proj.2.weight"].shape == (768 * 16, 1024)
    assert len([k for k in sd["ip_adapter"] if k.endswith("to_k_ip.weight")]) == 16


def _link_models(server, models_dir: str) -> None:
    """Expose the built files in the server sandbox's model folders (symlinks: no copies of GBs)."""
    for folder in os.listdir(models_dir):
        src_dir = os.path.join(models_dir, folder)
        dst_dir = server.sandbox.model_dir(folder)
        os.makedirs(dst_dir, exist_ok=True)
        for name in os.listdir(src_dir):
            dst = os.path.join(dst_dir, name)
            if not os.path.lexists(dst):
                os.symlink(os.path.join(src_dir, name), dst)


def _portrait(server, portraits_dir: str) -> str:
    shutil.copyfile(os.path.join(portraits_dir, "jolie_1.jpg"), os.path.join(server.sandbox.input_dir, "idsculpt_builder_portrait.jpg"))
    return "idsculpt_builder_portrait.jpg"


def sd15_graph(image: str, controlnets=tuple(M.get_spec(k).filename for k in CONTROLNETS), with_id: bool = True,
               with_upscale: bool = True) -> dict:
    """CheckpointLoaderSimple -> (ID adapter) -> ControlNets -> KSampler (1 step, 8x8 latent) -> VAEDecode -> PreviewImage
    (-> RealESRGAN x2 -> PreviewImage)."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": M.get_spec("normal_sd15").filename}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a DSLR portrait of a woman, black background, normal map", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["ckpt", 0], "seed": 0, "steps": 1, "cfg": 7.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
                                                   "latent_image": ["lat", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
        "upl": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": M.get_spec("realesrgan_x2").filename}},
        "up": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["upl", 0], "image": ["dec", 0]}},
        "upout": {"class_type": "PreviewImage", "inputs": {"images": ["up", 0]}},
    }
    pos, neg = ["pos", 0], ["neg", 0]
    for i, name in enumerate(controlnets):
        g[f"cnl{i}"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        g[f"cna{i}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": [f"cnl{i}", 0], "image": ["img", 0], "strength": 0.5,
            "start_percent": 0.0, "end_percent": 1.0, "vae": ["ckpt", 2]}}
        pos, neg = [f"cna{i}", 0], [f"cna{i}", 1]
    g["ks"]["inputs"].update(positive=pos, negative=neg)
    if not with_upscale:
        for k in ("upl", "up", "upout"):
            del g[k]
    if with_id:
        g["ifl"] = {"class_type": "IDSculptInsightFaceLoader", "inputs": {"model_name": "buffalo_l", "provider": "CPU"}}
        g["emb"] = {"class_type": "IDSculptIDEmbed", "inputs": {"image": ["img", 0], "insightface": ["ifl", 0], "face_index": 0}}
        g["ida"] = {"class_type": "IDSculptIDAdapterLoader", "inputs": {"adapter_name": M.get_spec("id_adapter").filename}}
        g["app"] = {"class_type": "IDSculptApplyIDAdapter", "inputs": {"model": ["ckpt", 0], "id_adapter": ["ida", 0], "face_id": ["emb", 0],
                                                                      "weight": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        g["ks"]["inputs"]["model"] = ["app", 0]
    return g


def test_comfy_loaders_accept_small_models(small_models, comfy_server, portraits_dir):
    """CheckpointLoaderSimple (as SD15), ControlNetLoader x3, our insightface + ID adapter loaders, all in one
    sampled graph through the real server."""
    _link_models(comfy_server, small_models)
    hist = comfy_server.submit(sd15_graph(_portrait(comfy_server, portraits_dir)), timeout=900)
    imgs = hist["outputs"]["out"]["images"]
    assert len(imgs) == 1 and os.path.isfile(comfy_server.output_path(imgs[0]))
    from PIL import Image

    up = hist["outputs"]["upout"]["images"]  # RealESRGAN x2 stand-in: 64 px decode -> 128 px
    assert Image.open(comfy_server.output_path(up[0])).size == (128, 128)
    log = comfy_server.log()
    assert "model_type EPS" in log  # SD1.5-family detection (load_checkpoint_guess_config logs the model type)
    comfy_server.free()


def test_comfy_inprocess_detects_sd15(small_models, comfy_inprocess):
    import comfy.controlnet
    import comfy.sd
    import comfy.supported_models

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        os.path.join(small_models, "checkpoints", "normal-adapted-sd1.5.safetensors"), output_vae=True, output_clip=True)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert model.model.model_config.unet_config["channel_mult"] == [1, 1, 1, 1]
    assert clip is not None and vae is not None
    for key in CONTROLNETS:
        cn = comfy.controlnet.load_controlnet(os.path.join(small_models, "controlnet", M.get_spec(key).filename))
        assert isinstance(cn, comfy.controlnet.ControlNet), key
    nodes = comfy_inprocess.load_pack_nodes()
    from idsculpt.core.face.id_adapter import IDAdapter

    comfy_inprocess.folder_paths.add_model_folder_path("ipadapter", os.path.join(small_models, "ipadapter"))
    out = comfy_inprocess.run_node(nodes["IDSculptIDAdapterLoader"], adapter_name=M.get_spec("id_adapter").filename)
    assert isinstance(out.result[0], IDAdapter)


@pytest.mark.skipif(os.environ.get("IDSCULPT_TEST_FULL_MODELS") != "1", reason="full-size SD1.5 (2.7 GB): set IDSCULPT_TEST_FULL_MODELS=1")
def test_comfy_loaders_accept_full_models(comfy_path, comfy_python, comfy_server, portraits_dir):
    d = _build(comfy_path, comfy_python, "full", FULL_KEYS)
    for folder in ("checkpoints", "controlnet"):  # prefixed: the small set uses the same names
        for name in os.listdir(os.path.join(d, folder)):
            link = os.path.join(comfy_server.sandbox.model_dir(folder), "full_" + name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(d, folder, name), link)
    g = sd15_graph(_portrait(comfy_server, portraits_dir), controlnets=("full_" + M.get_spec("controlnet_canny").filename,), with_id=False,
                   with_upscale=False)
    g["ckpt"]["inputs"]["ckpt_name"] = "full_" + M.get_spec("normal_sd15").filename
    hist = comfy_server.submit(g, timeout=1200)
    assert hist["outputs"]["out"]["images"]
    comfy_server.free()
