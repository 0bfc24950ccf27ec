"""A model file that is there but unusable gets its real cause (core/state_dict.py).

For every loader of the pack: random bytes, a real-format file cut short, and a file of another
model. Corrupt files say "corrupt or truncated" with the file's name and size and the file that was
expected; they never say the file "contains code" and never repeat torch's advice to turn the safety
check off. A pickle that does name code objects is refused as "not a plain weights file". A file of
another model says what it is (recognised by its keys) and what was expected. The same messages come
out of the ComfyUI nodes (in-process, and once through a real server's HTTP API).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import uuid

import pytest
import torch
from safetensors.torch import save_file

from idsculpt.core import state_dict as S
from idsculpt.core.models import get_spec
from panohead_fixtures import dump_release_pickle, tiny_generator
from tiny_models import write_tiny_faceid_adapter

VGG_CH = (64, 128, 256, 512, 512)
ALEX_CH = (64, 192, 384, 256, 256)
BANNED = ("weights_only", "contains code", "execute code", "arbitrary code")


# ------------------------------------------------------------------------------------------- files
def random_bytes(path: str, n: int = 5000, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    data = bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())
    assert not data.startswith((b"PK", b"\x80")), "seed gives bytes of a real format"
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def truncate(path: str, out: str, keep: float = 0.5) -> str:
    """A copy of ``path`` cut to ``keep`` of its length (what an interrupted download leaves)."""
    with open(path, "rb") as fh:
        data = fh.read()
    with open(out, "wb") as fh:
        fh.write(data[: int(len(data) * keep)])
    return out


def vgg16_sd() -> dict:
    from idsculpt.core.panohead.perceptual import VGG16Perceptual

    torch.manual_seed(0)
    return {"features." + k: v.clone() for k, v in VGG16Perceptual().features.state_dict().items()}


def alexnet_sd() -> dict:
    from idsculpt.core.eval.lpips import _alexnet_features

    torch.manual_seed(0)
    return {"features." + k: v.clone() for k, v in _alexnet_features().state_dict().items()}


def lins(channels) -> dict:
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(channels)}


def controlnet_sd() -> dict:
    """lllyasviel v1.1 layout (keys prefixed control_model.), SD1.5 context width 768; tiny shapes."""
    return {"control_model.input_hint_block.0.weight": torch.zeros(4, 3, 3, 3),
            "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, 768),
            "control_model.zero_convs.0.0.weight": torch.zeros(4, 4, 1, 1)}


def sd15_checkpoint_sd() -> dict:
    return {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, 768),
            "model.diffusion_model.out.2.weight": torch.zeros(4, 4, 3, 3),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 768)}


def release_pickle(path: str) -> str:
    with open(path, "wb") as fh:
        fh.write(dump_release_pickle(tiny_generator(seed=1), _tiny_cfg(), "raise RuntimeError('never run')\n"))
    return path


def _tiny_cfg() -> dict:
    from idsculpt.core.panohead.triplane import tiny_config

    return tiny_config()


def assert_corrupt(msg: str, name: str, key: str | None) -> None:
    assert f"{name} (" in msg and "bytes" in msg and "is corrupt or truncated" in msg, msg
    if key:
        assert get_spec(key).filename in msg and get_spec(key).source in msg, msg
    assert not any(b in msg for b in BANNED), msg


def assert_wrong(msg: str, name: str, what: str, key: str) -> None:
    assert msg.startswith(f"{name} is {what}, not "), msg
    assert get_spec(key).filename in msg and get_spec(key).source in msg, msg


# ------------------------------------------------------------------------------------------- loaders
def _load_id_adapter(path: str, d: str):
    from idsculpt.core.face.id_adapter import load_id_adapter

    return load_id_adapter(path)


def _load_vgg(path: str, d: str):
    from idsculpt.core.panohead.perceptual import load_vgg16

    return load_vgg16(path)


def _load_lpips_vgg(path: str, d: str):
    from idsculpt.core.panohead.perceptual import load_vgg16

    backbone = os.path.join(d, "backbone_vgg16.pth")
    torch.save(vgg16_sd(), backbone)
    return load_vgg16(backbone, path)


def _load_lpips_alex(role: str):
    def load(path: str, d: str):
        from idsculpt.core.eval.lpips import load_lpips_alex

        folder = os.path.join(d, "lpips_" + role)
        os.makedirs(folder, exist_ok=True)
        backbone, lin = os.path.join(folder, "alexnet-owt-7be5be79.pth"), os.path.join(folder, "alex.pth")
        os.replace(path, backbone if role == "backbone" else lin)
        if role == "backbone":
            torch.save(lins(ALEX_CH), lin)
        else:
            torch.save(alexnet_sd(), backbone)
        return load_lpips_alex(folder)
    return load


def _load_panohead(path: str, d: str):
    from idsculpt.core.panohead.checkpoint import load_generator

    return load_generator(path, convert_dir=os.path.join(d, "converted"))


def _write_valid(key: str, path: str) -> str:
    if key == "id_adapter":
        return write_tiny_faceid_adapter(path, "faceid-portrait")
    if key == "vgg16":
        torch.save(vgg16_sd(), path)
    elif key == "lpips_vgg":
        torch.save(lins(VGG_CH), path)
    elif key == "lpips_alex":
        torch.save(alexnet_sd(), path)
    elif key == "lpips_lin":
        torch.save(lins(ALEX_CH), path)
    elif key == "panohead":
        return release_pickle(path)
    return path


#: (id, table key, loader, file name, a file of another model: (writer, description it must get))
LOADERS = [
    ("id_adapter", "id_adapter", _load_id_adapter, "ip-adapter-faceid-portrait-v11_sd15.bin",
     (lambda p: torch.save(controlnet_sd(), p), r"a ControlNet \(Stable Diffusion 1.x\)")),
    ("id_adapter_st", "id_adapter", _load_id_adapter, "ip-adapter-faceid-portrait-v11_sd15.safetensors",
     (lambda p: save_file(sd15_checkpoint_sd(), p), r"a Stable Diffusion 1.x checkpoint \(UNet \+ VAE \+ text encoder\)")),
    ("vgg16", "vgg16", _load_vgg, "vgg16-397923af.pth",
     (lambda p: save_file(sd15_checkpoint_sd(), p), r"a Stable Diffusion 1.x checkpoint \(UNet \+ VAE \+ text encoder\)")),
    ("lpips_vgg", "lpips_vgg", _load_lpips_vgg, "vgg.pth",
     (lambda p: torch.save(lins(ALEX_CH), p), r"the LPIPS v0.1 AlexNet channel weights \(alex.pth\)")),
    ("lpips_alex", "lpips_alex", _load_lpips_alex("backbone"), "alexnet-owt-7be5be79.pth",
     (lambda p: torch.save(vgg16_sd(), p), "VGG16 weights")),
    ("lpips_lin", "lpips_lin", _load_lpips_alex("lin"), "alex.pth",
     (lambda p: torch.save(lins(VGG_CH), p), r"the LPIPS v0.1 VGG channel weights \(vgg.pth\)")),
    ("panohead", "panohead", _load_panohead, "easy-khair-180-gpc0.8-trans10-025000.pkl",
     (lambda p: torch.save(dict(vgg16_sd(), **{"classifier.6.weight": torch.zeros(1000, 4)}), p),
      r"torchvision VGG16 weights \(ImageNet classifier included\)")),
]
IDS = [x[0] for x in LOADERS]


@pytest.mark.parametrize("case", LOADERS, ids=IDS)
def test_valid_file_loads(tmp_path, case):
    """Control: the same loaders accept the small valid files the other cases damage."""
    _, key, load, name, _ = case
    path = _write_valid(key, str(tmp_path / name))
    assert load(path, str(tmp_path)) is not None


@pytest.mark.parametrize("case", LOADERS, ids=IDS)
def test_random_bytes_are_corrupt(tmp_path, case):
    _, key, load, name, _ = case
    path = random_bytes(str(tmp_path / name))
    with pytest.raises(S.ModelFileError) as e:
        load(path, str(tmp_path))
    assert e.value.kind == "corrupt"
    assert_corrupt(str(e.value), name, key)
    assert "5,000 bytes" in str(e.value) and "not a safetensors, PyTorch or pickle weight file" in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.999], ids=["half", "last_bytes_missing"])
@pytest.mark.parametrize("case", LOADERS, ids=IDS)
def test_truncated_file_is_corrupt(tmp_path, case, keep):
    _, key, load, name, _ = case
    whole = _write_valid(key, str(tmp_path / ("whole_" + name)))
    path = truncate(whole, str(tmp_path / name), keep)
    size = os.path.getsize(path)
    with pytest.raises(S.ModelFileError) as e:
        load(path, str(tmp_path))
    assert e.value.kind == "corrupt"
    assert_corrupt(str(e.value), name, key)
    assert f"{name} ({S.size_text(size)})" in str(e.value)


@pytest.mark.parametrize("case", LOADERS, ids=IDS)
def test_file_of_another_model_is_named(tmp_path, case):
    _, key, load, name, (write, what) = case
    path = str(tmp_path / name)
    write(path)
    with pytest.raises(ValueError) as e:
        load(path, str(tmp_path))
    assert e.value.kind == "wrong"
    msg = str(e.value)
    assert re.match(rf"{re.escape(name)} is {what}, not ", msg), msg
    assert_wrong(msg, name, re.search(what, msg).group(0), key)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


#: torch-pickle loaders (safetensors cannot hold code; PanoHead's own unpickler keeps every global inert)
PICKLED = [c for c in LOADERS if c[1] != "panohead" and not c[3].endswith(".safetensors")]


@pytest.mark.parametrize("case", PICKLED, ids=[c[0] for c in PICKLED])
def test_pickle_with_code_is_refused_not_run(tmp_path, case):
    """A pickle naming a callable is 'not a plain weights file' (a refusal, not 'corrupt'); nothing runs."""
    _, key, load, name, _ = case
    marker = str(tmp_path / "PWNED")
    path = str(tmp_path / name)
    torch.save({"weight": torch.zeros(2), "hook": _Evil(marker)}, path)
    with pytest.raises(S.ModelFileError) as e:
        load(path, str(tmp_path))
    msg = str(e.value)
    assert e.value.kind == "unsafe" and not os.path.exists(marker)
    assert msg.startswith(f"{name} is not a plain weights file: its pickle names Python objects (")
    assert ("io.open" in msg or "builtins.open" in msg) and get_spec(key).source in msg, msg
    assert not any(b in msg for b in BANNED), msg


# ------------------------------------------------------------------------------------------- the reader itself
def test_format_comes_from_the_bytes_not_the_name(tmp_path):
    sd = {"a": torch.arange(6.0).reshape(2, 3)}
    save_file(sd, str(tmp_path / "really_safetensors.bin"))
    torch.save(sd, str(tmp_path / "really_torch.safetensors"))
    torch.save(sd, str(tmp_path / "legacy.pth"), _use_new_zipfile_serialization=False)
    for n, fmt in (("really_safetensors.bin", "safetensors"), ("really_torch.safetensors", "torch-zip"), ("legacy.pth", "torch-legacy")):
        assert S.file_format(str(tmp_path / n)) == fmt
        assert torch.equal(S.read_state_dict(str(tmp_path / n))["a"], sd["a"])


def test_what_each_cut_reports(tmp_path):
    """The reason names what is missing: safetensors' header size against the file's, the zip directory,
    the legacy format's missing tensor bytes, a pickle stopping early; tiny, empty and text files."""
    sd = {"a": torch.zeros(100, 100)}
    st, z, leg = str(tmp_path / "w.safetensors"), str(tmp_path / "w.pth"), str(tmp_path / "l.pth")
    save_file(sd, st)
    torch.save(sd, z)
    torch.save(sd, leg, _use_new_zipfile_serialization=False)

    def reason(path: str) -> str:
        with pytest.raises(S.ModelFileError) as e:
            S.read_state_dict(path, "vgg16")
        assert e.value.kind == "corrupt"
        return str(e.value)

    full = os.path.getsize(st)
    assert f"its safetensors header describes {S.size_text(full)}, the file has {full // 2:,}" in reason(truncate(st, st + ".cut"))
    assert "zip (PyTorch) file without its directory at the end" in reason(truncate(z, z + ".cut"))
    legacy_cut = truncate(leg, leg + ".cut", 0.999)
    missing = os.path.getsize(leg) - os.path.getsize(legacy_cut)
    assert f"its tensor data ends {missing:,} bytes early" in reason(legacy_cut)
    cut_pickle = str(tmp_path / "p.pth")
    with open(cut_pickle, "wb") as fh, open(leg, "rb") as src:
        fh.write(src.read(100))
    assert "its pickle stops at byte 100 before its end" in reason(cut_pickle)
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "it is empty (0 bytes)" in reason(str(tmp_path / "empty.pth"))
    (tmp_path / "tiny.pth").write_bytes(b"PK\x03")
    assert "only 3 bytes long" in reason(str(tmp_path / "tiny.pth"))
    (tmp_path / "page.pth").write_bytes(b"<!DOCTYPE html><html><body>" + b"x" * 200)
    assert "it is a text file" in reason(str(tmp_path / "page.pth"))


def test_plain_python_pickle_is_not_a_torch_file(tmp_path):
    p = tmp_path / "plain.bin"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(S.ModelFileError, match="plain.bin is a plain Python pickle, not a PyTorch weights file") as e:
        S.read_state_dict(str(p), "id_adapter")
    assert e.value.kind == "wrong"


def test_nested_dicts_flatten_and_state_dict_unwraps(tmp_path):
    p = str(tmp_path / "n.bin")
    torch.save({"state_dict": {"image_proj": {"w": torch.ones(1)}, "epoch": 3}, "optimizer": {}}, p)
    assert list(S.read_state_dict(p)) == ["image_proj.w"]
    torch.save({"epoch": 3}, p)
    with pytest.raises(S.ModelFileError, match="n.bin holds no tensors"):
        S.read_state_dict(p)


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_describe_weights_known_kinds():
    """Each common kind is recognised from its keys/shapes alone (a header's shapes are enough)."""
    from idsculpt.core.face.id_adapter import IDAdapter, IDAdapterInfo, id_adapter_state_dict, sd15_layer_hidden

    ad = id_adapter_state_dict(IDAdapter(IDAdapterInfo("faceid-portrait", 16, 768, 512, sd15_layer_hidden(), False)))
    faceid = {f"{g}.{k}": v for g, d in ad.items() for k, v in d.items()}
    cases = {
        "an IP-Adapter FaceID file, 16 ID tokens": faceid,
        "an IP-Adapter Plus file (CLIP image Resampler)": {"image_proj.latents": (1, 16, 768), "image_proj.proj_in.weight": (768, 1024),
                                                           "ip_adapter.1.to_k_ip.weight": (320, 768)},
        "a plain IP-Adapter file (CLIP image embedding)": {"image_proj.proj.weight": (3072, 1024), "ip_adapter.1.to_k_ip.weight": (320, 768)},
        "an IP-Adapter FaceID Plus/PlusV2 file (needs CLIP-vision features)": {"image_proj.perceiver_resampler.proj_in.weight": (768, 1280),
                                                                              "ip_adapter.1.to_k_ip.weight": (320, 768)},
        "a ControlNet (Stable Diffusion 1.x)": _shapes(controlnet_sd()),
        "a ControlNet (Stable Diffusion XL)": {"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
                                               "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 2048)},
        "a Stable Diffusion 1.x checkpoint (UNet + VAE + text encoder)": _shapes(sd15_checkpoint_sd()),
        "a Stable Diffusion XL checkpoint": {"model.diffusion_model.out.2.weight": (4, 320, 3, 3), "conditioner.embedders.0.x": (1,)},
        "a Stable Diffusion 2.x UNet (diffusion model weights)": {"input_blocks.0.0.weight": (320, 4, 3, 3), "out.2.weight": (4, 320, 3, 3),
                                                                  "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)},
        "a VAE (image autoencoder, e.g. sd-vae-ft-mse)": {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3)},
        "a LoRA": {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)},
        "torchvision VGG16 weights (ImageNet classifier included)": dict(_shapes(vgg16_sd()), **{"classifier.6.weight": (1000, 4096)}),
        "VGG16 weights": _shapes(vgg16_sd()),
        "AlexNet weights (torchvision layout)": _shapes(alexnet_sd()),
        "the LPIPS v0.1 VGG channel weights (vgg.pth)": _shapes(lins(VGG_CH)),
        "the LPIPS v0.1 AlexNet channel weights (alex.pth)": _shapes(lins(ALEX_CH)),
        "a PanoHead/EG3D tri-plane generator": _shapes(tiny_generator(seed=0).state_dict()),
        "a RealESRGAN/ESRGAN upscaler (RRDBNet)": {"params_ema.conv_first.weight": (64, 12, 3, 3), "params_ema.body.0.rdb1.conv1.weight": (32, 64, 3, 3)},
        "a CLIP vision encoder": {"vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14), "visual_projection.weight": (768, 1024)},
        "a CLIP model (vision + text)": {"vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14), "text_model.encoder.layers.0.x": (1,)},
        "a CLIP model (OpenAI/open_clip layout)": {"visual.conv1.weight": (1024, 3, 14, 14)},
    }
    for want, sd in cases.items():
        got = S.describe_weights(sd)
        assert got is not None and got[1] == want, (want, got)
    assert S.describe_weights({"a": (2,), "b.c": (3, 3)}) is None


def test_wrong_model_of_the_right_kind_says_why_it_does_not_load(tmp_path):
    """A VGG-like file that is not VGG16 (VGG19) or a VGG16 of other shapes: named, and why."""
    from idsculpt.core.panohead.perceptual import load_vgg16

    vgg19 = dict(vgg16_sd(), **{f"features.{i}.weight": torch.zeros(512, 512, 3, 3) for i in (30, 32, 34)})
    torch.save(vgg19, str(tmp_path / "vgg19.pth"))
    with pytest.raises(S.ModelFileError, match=r"vgg19.pth is VGG19 weights, not VGG16 backbone weights \(layers VGG16 does not have"):
        load_vgg16(str(tmp_path / "vgg19.pth"))
    narrow = vgg16_sd()
    narrow["features.28.weight"] = torch.zeros(512, 256, 3, 3)
    torch.save(narrow, str(tmp_path / "narrow.pth"))
    with pytest.raises(S.ModelFileError, match=r"narrow.pth looks like VGG16 weights but does not load: shapes differ: \['28.weight"):
        load_vgg16(str(tmp_path / "narrow.pth"))


def test_panohead_safetensors_slot_names_other_models(tmp_path):
    from idsculpt.core.panohead.checkpoint import load_generator

    st = str(tmp_path / "panohead.safetensors")
    save_file({"params_ema.conv_first.weight": torch.zeros(4, 12, 3, 3), "params_ema.body.0.rdb1.conv1.weight": torch.zeros(4, 4, 3, 3)}, st)
    with open(str(tmp_path / "panohead.json"), "w") as fh:
        json.dump({"class_name": "TriPlaneGenerator", "init_kwargs": _tiny_cfg()}, fh)
    with pytest.raises(S.ModelFileError, match=r"panohead.safetensors is a RealESRGAN/ESRGAN upscaler \(RRDBNet\), not a PanoHead generator"):
        load_generator(st)


def test_clip_folder_corrupt_and_wrong(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from idsculpt.core.eval.clip import HFClipImageEmbedder

    folder = tmp_path / "clip"
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(str(folder))
    weights = str(folder / "model.safetensors")
    assert HFClipImageEmbedder(str(folder))(torch.rand(1, 32, 32, 3)).shape == (1, 16)  # control
    truncate(weights, weights)
    with pytest.raises(S.ModelFileError, match=r"model.safetensors \([\d,]+ bytes\) is corrupt or truncated: its safetensors header") as e:
        HFClipImageEmbedder(str(folder))
    assert "openai/clip-vit-large-patch14" in str(e.value)
    random_bytes(weights)
    with pytest.raises(S.ModelFileError, match="is corrupt or truncated: it is not a safetensors"):
        HFClipImageEmbedder(str(folder))
    save_file({"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 2, 3, 3)}, weights)
    with pytest.raises(S.ModelFileError, match=r"model.safetensors is a VAE .*, not a CLIP vision model \(\d+ CLIP vision weights missing"):
        HFClipImageEmbedder(str(folder))
    (folder / "config.json").write_text('{"model_type": "clip_vision_model", "hidden_si')
    with pytest.raises(S.ModelFileError, match="config.json is corrupt or truncated: not valid JSON"):
        HFClipImageEmbedder(str(folder))
    (folder / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(S.ModelFileError, match="holds a vit model .config.json., not a CLIP vision model"):
        HFClipImageEmbedder(str(folder))


# ------------------------------------------------------------------------------------------- through ComfyUI
@pytest.fixture(scope="module")
def pack_nodes(comfy_inprocess):
    return comfy_inprocess.load_pack_nodes()


_PLACED: list[str] = []


def _place(comfy_inprocess, folder: str, name: str, write) -> str:
    """Write a model file into the (session-wide) sandbox folder; removed again after the test."""
    path = os.path.join(comfy_inprocess.sandbox.model_dir(folder), name)
    write(path)
    _PLACED.append(path)
    comfy_inprocess.folder_paths.filename_list_cache.clear()
    return path


@pytest.fixture(autouse=True)
def _remove_placed():
    """Other tests list the sandbox folders: leave them as found."""
    yield
    while _PLACED:
        p = _PLACED.pop()
        for q in (p, os.path.splitext(p)[0] + ".safetensors", os.path.splitext(p)[0] + ".json"):
            if os.path.isfile(q) and (q == p or p.endswith(".pkl")):
                os.remove(q)


def _node_error(comfy_inprocess, node, **inputs) -> S.ModelFileError:
    with pytest.raises(S.ModelFileError) as e:
        comfy_inprocess.run_node(node, **inputs)
    return e.value


@pytest.mark.comfy
def test_id_adapter_node(comfy_inprocess, pack_nodes, tmp_path):
    node = pack_nodes["IDSculptIDAdapterLoader"]
    name = "files-test-random.bin"
    _place(comfy_inprocess, "ipadapter", name, random_bytes)
    err = _node_error(comfy_inprocess, node, adapter_name=name)
    assert err.kind == "corrupt"
    assert_corrupt(str(err), name, "id_adapter")
    whole = write_tiny_faceid_adapter(str(tmp_path / "whole.bin"))
    name = "files-test-cut.bin"
    _place(comfy_inprocess, "ipadapter", name, lambda p: truncate(whole, p))
    assert_corrupt(str(_node_error(comfy_inprocess, node, adapter_name=name)), name, "id_adapter")
    name = "files-test-controlnet.pth"
    _place(comfy_inprocess, "ipadapter", name, lambda p: torch.save(controlnet_sd(), p))
    assert_wrong(str(_node_error(comfy_inprocess, node, adapter_name=name)), name, "a ControlNet (Stable Diffusion 1.x)", "id_adapter")


@pytest.fixture()
def placed_panohead(comfy_inprocess):
    """A valid tiny release pickle and VGG16 in the sandbox's models/idsculpt (for the VGG cases)."""
    ckpt = _place(comfy_inprocess, "idsculpt", "files-test-panohead.pkl", release_pickle)
    vgg = _place(comfy_inprocess, "idsculpt", "files-test-vgg16.pth", lambda p: torch.save(vgg16_sd(), p))
    return os.path.basename(ckpt), os.path.basename(vgg)


@pytest.mark.comfy
def test_panohead_node(comfy_inprocess, pack_nodes, placed_panohead, tmp_path):
    node = pack_nodes["IDSculptPanoHeadLoader"]
    _, vgg = placed_panohead
    name = "files-test-random-panohead.pkl"
    _place(comfy_inprocess, "idsculpt", name, random_bytes)
    err = _node_error(comfy_inprocess, node, checkpoint=name, vgg16=vgg, lpips_weights="none")
    assert err.kind == "corrupt"
    assert_corrupt(str(err), name, "panohead")
    whole = release_pickle(str(tmp_path / "whole.pkl"))
    name = "files-test-cut-panohead.pkl"
    _place(comfy_inprocess, "idsculpt", name, lambda p: truncate(whole, p))
    err = _node_error(comfy_inprocess, node, checkpoint=name, vgg16=vgg, lpips_weights="none")
    assert_corrupt(str(err), name, "panohead")
    assert "its pickle stops at byte" in str(err)
    name = "files-test-vgg-as-panohead.pkl"
    _place(comfy_inprocess, "idsculpt", name, lambda p: torch.save(vgg16_sd(), p))
    err = _node_error(comfy_inprocess, node, checkpoint=name, vgg16=vgg, lpips_weights="none")
    assert_wrong(str(err), name, "VGG16 weights", "panohead")


@pytest.mark.comfy
def test_vgg_nodes(comfy_inprocess, pack_nodes, placed_panohead, tmp_path):
    """The VGG16 and LPIPS-weights inputs of PanoHead Loader (the same loader serves Texture Refine)."""
    node = pack_nodes["IDSculptPanoHeadLoader"]
    ckpt, vgg = placed_panohead
    assert "LPIPS" in node_info(comfy_inprocess, node, checkpoint=ckpt, vgg16=vgg, lpips_weights="none")  # control
    name = "files-test-random-vgg16.pth"
    _place(comfy_inprocess, "idsculpt", name, random_bytes)
    assert_corrupt(str(_node_error(comfy_inprocess, node, checkpoint=ckpt, vgg16=name, lpips_weights="none")), name, "vgg16")
    torch.save(vgg16_sd(), str(tmp_path / "whole.pth"))
    name = "files-test-cut-vgg16.pth"
    _place(comfy_inprocess, "idsculpt", name, lambda p: truncate(str(tmp_path / "whole.pth"), p))
    assert_corrupt(str(_node_error(comfy_inprocess, node, checkpoint=ckpt, vgg16=name, lpips_weights="none")), name, "vgg16")
    name = "files-test-sd15-as-vgg16.safetensors"
    _place(comfy_inprocess, "idsculpt", name, lambda p: save_file(sd15_checkpoint_sd(), p))
    err = _node_error(comfy_inprocess, node, checkpoint=ckpt, vgg16=name, lpips_weights="none")
    assert_wrong(str(err), name, "a Stable Diffusion 1.x checkpoint (UNet + VAE + text encoder)", "vgg16")
    name = "files-test-alex.pth"
    _place(comfy_inprocess, "idsculpt", name, lambda p: torch.save(lins(ALEX_CH), p))
    err = _node_error(comfy_inprocess, node, checkpoint=ckpt, vgg16=vgg, lpips_weights=name)
    assert_wrong(str(err), name, "the LPIPS v0.1 AlexNet channel weights (alex.pth)", "lpips_vgg")


def node_info(comfy_inprocess, node, **inputs) -> str:
    return comfy_inprocess.run_node(node, **inputs).args[1]


@pytest.mark.comfy
def test_bad_files_through_the_server(comfy_server):
    """What the user sees in ComfyUI's history: a corrupt file and a file of another model, as queued prompts."""
    from comfy_harness import ComfyPromptError

    folder = comfy_server.sandbox.model_dir("ipadapter")
    tag = uuid.uuid4().hex[:8]  # names no model folder of the user's can hold
    corrupt, other = f"corrupt-{tag}.bin", f"controlnet-{tag}.pth"
    random_bytes(os.path.join(folder, corrupt))
    torch.save(controlnet_sd(), os.path.join(folder, other))

    def run(name: str) -> str:
        prompt = {"1": {"class_type": "IDSculptIDAdapterLoader", "inputs": {"adapter_name": name}},
                  "2": {"class_type": "HarnessLiveObjects", "inputs": {"nonce": 0, "after": ["1", 0]}}}
        with pytest.raises(ComfyPromptError) as e:
            comfy_server.submit(prompt, timeout=120)
        return str(e.value).split("\n")[0]

    try:
        msg = run(corrupt)
        assert f"ModelFileError: {corrupt} (5,000 bytes) is corrupt or truncated" in msg, msg
        assert not any(b in msg for b in BANNED), msg
        msg = run(other)
        assert f"{other} is a ControlNet (Stable Diffusion 1.x), not an IP-Adapter FaceID file" in msg, msg
    finally:
        for name in (corrupt, other):
            os.remove(os.path.join(folder, name))

