"""core/face/id_adapter.py: FaceID file layout, variant detection, refusal of other files, attention maths."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from idsculpt.core.face.id_adapter import (
    SD15_ATTN2_BLOCKS,
    FaceIDProjection,
    decoupled_cross_attention,
    detect_variant,
    load_id_adapter,
    read_id_adapter,
    sd15_layer_hidden,
)
from tiny_models import write_tiny_faceid_adapter


@pytest.mark.parametrize("variant,ext", [("faceid-portrait", ".bin"), ("faceid-portrait", ".safetensors"), ("faceid", ".bin"), ("faceid", ".safetensors")])
def test_roundtrip_and_variant(tmp_path, variant: str, ext: str) -> None:
    path = write_tiny_faceid_adapter(str(tmp_path / f"a{ext}"), variant)
    raw = read_id_adapter(path)
    ad = load_id_adapter(path)
    assert ad.variant == variant
    assert ad.info.num_tokens == (16 if variant == "faceid-portrait" else 4)
    assert ad.info.cross_attention_dim == 64 and ad.info.id_embedding_dim == 512
    assert ad.info.has_lora == (variant == "faceid")
    assert list(ad.layers) == [str(k) for k in range(1, 32, 2)]
    assert torch.equal(ad.layers["31"].to_v_ip.weight, raw["ip_adapter"]["31.to_v_ip.weight"])
    assert torch.equal(ad.image_proj.proj[2].bias, raw["image_proj"]["proj.2.bias"])
    tok = ad.id_tokens(F.normalize(torch.randn(512), dim=0))
    assert tok.shape == (1, ad.info.num_tokens, 64)


def test_full_size_portrait_v11_layout() -> None:
    """Our modules at SD1.5 size have exactly the public Portrait v11 keys and shapes."""
    proj = FaceIDProjection(768, 512, 16)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {"proj.0.weight": (1024, 512), "proj.0.bias": (1024,), "proj.2.weight": (12288, 1024),
                      "proj.2.bias": (12288,), "norm.weight": (768,), "norm.bias": (768,)}
    hidden = sd15_layer_hidden()
    assert hidden["1"] == 320 and hidden["9"] == 1280 and hidden["13"] == 1280 and hidden["19"] == 640 and hidden["29"] == 320
    assert hidden["31"] == 1280
    # parameter count of the public file: 13.12 M projection + 19.17 M ip k/v = 32.29 M (64.6 MB fp16)
    n_proj = sum(v.numel() for v in proj.state_dict().values())
    n_ip = sum(2 * 768 * h for h in hidden.values())
    assert (n_proj, n_ip) == (13_122_048, 19_169_280)
    assert [b for b, _ in SD15_ATTN2_BLOCKS][-1] == ("middle", 0)  # ComfyUI's key for the middle block


def test_detect_variant_from_shapes_not_names() -> None:
    sd = {"image_proj": {"proj.0.weight": torch.zeros(1024, 512), "proj.0.bias": torch.zeros(1024),
                         "proj.2.weight": torch.zeros(768 * 4, 1024), "proj.2.bias": torch.zeros(768 * 4),
                         "norm.weight": torch.zeros(768), "norm.bias": torch.zeros(768)},
          "ip_adapter": {f"{k}.to_{x}_ip.weight": torch.zeros(h, 768) for k, h in sd15_layer_hidden().items() for x in "kv"}}
    info = detect_variant(sd)
    assert (info.variant, info.num_tokens, info.cross_attention_dim) == ("faceid-portrait", 4, 768)
    sd["ip_adapter"]["0.to_q_lora.down.weight"] = torch.zeros(128, 320)
    assert detect_variant(sd).variant == "faceid"


def _bad(tmp_path, name: str, obj) -> str:
    p = str(tmp_path / name)
    if name.endswith(".safetensors"):
        save_file(obj, p)
    else:
        torch.save(obj, p)
    return p


@pytest.mark.parametrize(
    "name,obj,match",
    [
        ("ip-adapter_sd15.bin", {"image_proj": {"proj.weight": torch.zeros(3072, 1024), "proj.bias": torch.zeros(3072), "norm.weight": torch.zeros(768), "norm.bias": torch.zeros(768)},
                                 "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 768), "1.to_v_ip.weight": torch.zeros(320, 768)}}, "plain IP-Adapter"),
        ("ip-adapter-plus_sd15.bin", {"image_proj": {"latents": torch.zeros(1, 16, 768), "proj_in.weight": torch.zeros(768, 1024)}, "ip_adapter": {}}, "Plus"),
        ("ip-adapter-full-face_sd15.bin", {"image_proj": {"proj.0.weight": torch.zeros(1024, 1024), "proj.3.weight": torch.zeros(768)}, "ip_adapter": {}}, "Full-Face"),
        ("ip-adapter-faceid-plusv2_sd15.bin", {"image_proj": {"perceiver_resampler.proj_in.weight": torch.zeros(768, 1280), "proj.0.weight": torch.zeros(1024, 512)}, "ip_adapter": {}}, "FaceID Plus"),
        ("random.safetensors", {"model.diffusion_model.x.weight": torch.zeros(3, 3)}, "is a Stable Diffusion UNet .*, not an IP-Adapter FaceID file"),
        ("checkpoint.bin", {"state_dict": {"a": torch.zeros(2)}}, "is not an IP-Adapter FaceID file"),
        ("noip.bin", {"image_proj": {"proj.0.weight": torch.zeros(1024, 512), "proj.0.bias": torch.zeros(1024), "proj.2.weight": torch.zeros(768 * 16, 1024),
                                     "proj.2.bias": torch.zeros(768 * 16), "norm.weight": torch.zeros(768), "norm.bias": torch.zeros(768)}, "ip_adapter": {}}, "to_k_ip"),
    ],
)
def test_refuses_non_faceid_files(tmp_path, name: str, obj, match: str) -> None:
    with pytest.raises(ValueError, match=match) as exc:
        load_id_adapter(_bad(tmp_path, name, obj))
    assert name in str(exc.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_pickled_code(tmp_path) -> None:
    p = str(tmp_path / "evil.bin")
    with open(p, "wb") as f:
        pickle.dump({"image_proj": _Evil(), "ip_adapter": {}}, f)
    with pytest.raises(ValueError, match="evil.bin is not a plain weights file: its pickle names Python objects "
                       r"\((posix|nt)\.system\).*h94/IP-Adapter-FaceID") as e:
        load_id_adapter(p)
    assert "weights_only" not in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_id_adapter(str(tmp_path / "missing.bin"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors .22 bytes. is corrupt or truncated"):
        load_id_adapter(str(tmp_path / "junk.safetensors"))


def test_decoupled_attention_matches_reference() -> None:
    torch.manual_seed(0)
    b, n, t, heads, d = 4, 10, 16, 2, 8
    q = torch.randn(b, n, heads * d)
    k_ip, v_ip = torch.randn(1, t, heads * d), torch.randn(1, t, heads * d)
    text = torch.randn(b, n, heads * d)
    w = torch.tensor([1.0, 0.0, 0.5, 2.0])
    out = decoupled_cross_attention(q, text, k_ip, v_ip, heads, w)
    # reference: per head softmax(q k^T / sqrt(d)) v
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh = k_ip.view(1, t, heads, d).transpose(1, 2)
    vh = v_ip.view(1, t, heads, d).transpose(1, 2)
    ref = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, -1) @ vh
    ref = ref.transpose(1, 2).reshape(b, n, heads * d)
    assert torch.allclose(out, text + w.view(-1, 1, 1) * ref, atol=1e-5)
    assert torch.equal(out[1], text[1])


def test_id_tokens_depend_on_identity(tmp_path) -> None:
    ad = load_id_adapter(write_tiny_faceid_adapter(str(tmp_path / "p.bin")))
    e1, e2 = F.normalize(torch.randn(2, 512), dim=-1)
    t1, t2 = ad.id_tokens(e1), ad.id_tokens(e2)
    assert not torch.allclose(t1, t2)
    assert torch.allclose(ad.uncond_tokens(), ad.id_tokens(torch.zeros(512)))
    # LayerNorm output: zero mean per token (before the affine part) -> check against manual
    x = ad.image_proj.proj(e1[None]).view(1, 16, 64)
    assert torch.allclose(t1, F.layer_norm(x, (64,), ad.image_proj.norm.weight, ad.image_proj.norm.bias), atol=1e-5)


def _resampler(dim: int, in_dim: int, out_dim: int) -> dict[str, torch.Tensor]:
    """image_proj of a Resampler-based IP-Adapter (Plus / Plus-Face / FaceID Portrait unnorm), cubiq's key names."""
    return {"latents": torch.zeros(1, 16, dim), "proj_in.weight": torch.zeros(dim, in_dim), "proj_in.bias": torch.zeros(dim),
            "proj_out.weight": torch.zeros(out_dim, dim), "proj_out.bias": torch.zeros(out_dim),
            "norm_out.weight": torch.zeros(out_dim), "norm_out.bias": torch.zeros(out_dim),
            "layers.0.0.to_q.weight": torch.zeros(dim, dim)}


def _ip(width: int) -> dict[str, torch.Tensor]:
    return {f"{k}.to_{x}_ip.weight": torch.zeros(640, width) for k in (1, 3) for x in "kv"}


@pytest.mark.parametrize("name", ["ip-adapter-faceid-portrait_sdxl_unnorm.bin", "renamed.bin", "renamed.safetensors"])
def test_portrait_unnorm_is_named(tmp_path, name: str) -> None:
    """h94's ip-adapter-faceid-portrait_sdxl_unnorm: a Resampler (dim 1280, 16 queries, output 2048 = SDXL) over the
    512-wide ArcFace embedding. Refused as Portrait unnorm by its shapes, whatever the file is called."""
    sd = {"image_proj": _resampler(1280, 512, 2048), "ip_adapter": _ip(2048)}
    obj = {f"{g}.{k}": v for g, d in sd.items() for k, v in d.items()} if name.endswith(".safetensors") else sd
    with pytest.raises(ValueError, match=r"FaceID Portrait unnorm .*proj_in \(1280, 512\).*portrait-v11_sd15") as exc:
        load_id_adapter(_bad(tmp_path, name, obj))
    assert "Plus" not in str(exc.value)


@pytest.mark.parametrize("name,image_proj,width", [
    ("ip-adapter-plus_sdxl_vit-h.bin", _resampler(1280, 1280, 2048), 2048),  # CLIP ViT-H features, SDXL
    ("ip-adapter-plus-face_sd15.bin", _resampler(768, 1024, 768), 768),  # CLIP ViT-H penultimate (1024), SD1.5
])
def test_clip_resamplers_stay_ip_adapter_plus(tmp_path, name: str, image_proj, width: int) -> None:
    with pytest.raises(ValueError, match="IP-Adapter Plus") as exc:
        load_id_adapter(_bad(tmp_path, name, {"image_proj": image_proj, "ip_adapter": _ip(width)}))
    assert "unnorm" not in str(exc.value)


def test_unnorm_flag_and_names(tmp_path) -> None:
    """cubiq's dict flag "portraitunnorm" (set from the file name) is honoured on a Resampler; the name alone
    never refuses a Portrait v11 MLP file."""
    flagged = {"portraitunnorm": True, "image_proj": _resampler(1280, 1280, 2048), "ip_adapter": _ip(2048)}
    with pytest.raises(ValueError, match="FaceID Portrait unnorm"):
        detect_variant(flagged, "x.bin")
    path = write_tiny_faceid_adapter(str(tmp_path / "my-unnorm-copy.bin"), "faceid-portrait")
    assert load_id_adapter(path).variant == "faceid-portrait"
