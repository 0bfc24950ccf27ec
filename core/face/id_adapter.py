"""ID adapter: IP-Adapter FaceID projection models and their decoupled cross-attention.

ID-Sculpt injects identity into SD1.5 with IP-Adapter FaceID *Portrait v11*
(``ip-adapter-faceid-portrait-v11_sd15.bin``): an ArcFace embedding (512, L2-normalised) is mapped
by an MLP to 16 "ID tokens" of the UNet's context width, and every cross-attention layer gets a
second key/value projection for those tokens (decoupled cross-attention):

    out = attn(q, k_text, v_text) + weight * attn(q, to_k_ip(id_tokens), to_v_ip(id_tokens))

The classes here are our own, written to load the public files unchanged. File layout (read from
tencent-ailab/IP-Adapter ``ip_adapter_faceid.py`` and cubiq/ComfyUI_IPAdapter_plus):

    {"image_proj": {"proj.0.weight" [2E, E], "proj.0.bias" [2E],          # E = 512 (ArcFace)
                    "proj.2.weight" [C*T, 2E], "proj.2.bias" [C*T],        # C = context width (768)
                    "norm.weight" [C], "norm.bias" [C]},                   # T = tokens (16 or 4)
     "ip_adapter": {"1.to_k_ip.weight" [hidden, C], "1.to_v_ip.weight" [hidden, C],
                    "3.to_k_ip.weight", ..., "31.to_v_ip.weight",          # odd = attn2 processors
                    # plain FaceID only: LoRA of every attention processor,
                    "0.to_q_lora.down.weight", "1.to_k_lora.up.weight", ...}}

``.safetensors`` versions store the same tensors flat as ``image_proj.<key>`` / ``ip_adapter.<key>``.
The processor index follows diffusers' ``unet.attn_processors`` order (down blocks, up blocks, mid
block; attn1 even, attn2 odd). In ComfyUI's SD1.5 UNet that is input blocks 1,2,4,5,7,8 -> keys
1..11, output blocks 3..11 -> keys 13..29, middle block -> key 31 (see ``SD15_ATTN2_BLOCKS``).

Variants recognised:
  * ``faceid-portrait``: MLP projection, 16 tokens, no LoRA (Portrait and Portrait v11, SD1.5/SDXL);
  * ``faceid``: MLP projection, 4 tokens, LoRA weights in the file. The LoRA must be applied to the
    UNet separately (``ip-adapter-faceid_sd15_lora.safetensors`` through a LoRA loader, as with
    IPAdapter_plus); the LoRA tensors in this file are ignored by us.
FaceID Plus / Plus v2 (need CLIP-vision features), portrait-unnorm and non-FaceID IP-Adapters are
refused with a message saying what the file is.

Nothing here imports ComfyUI; the ComfyUI attention patch lives in nodes/engines/id_patch.py.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..state_dict import read_state_dict
from ..state_dict import wrong_model_error

# ComfyUI SD1.5 cross-attention blocks -> IP-Adapter processor key (attn2 of transformer 0).
# Order: diffusers down blocks (= ComfyUI input 1,2,4,5,7,8), up blocks (output 3..11), mid block.
SD15_ATTN2_BLOCKS: list[tuple[tuple[str, int], str]] = (
    [(("input", b), str(2 * i + 1)) for i, b in enumerate([1, 2, 4, 5, 7, 8])]
    + [(("output", b), str(2 * (6 + i) + 1)) for i, b in enumerate(range(3, 12))]
    + [(("middle", 0), "31")]
)

_ARCFACE_DIM = 512  # insightface ArcFace embedding width, the input of every FaceID projection
_PROJ_KEYS = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"}
_IP_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")


class FaceIDProjection(nn.Module):
    """ArcFace embedding [B,E] -> ID tokens [B,T,C] (IP-Adapter's ``MLPProjModel`` key layout)."""

    def __init__(self, cross_attention_dim: int = 768, id_embedding_dim: int = 512, num_tokens: int = 16):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(
            nn.Linear(id_embedding_dim, id_embedding_dim * 2),
            nn.GELU(),
            nn.Linear(id_embedding_dim * 2, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, id_embedding: torch.Tensor) -> torch.Tensor:
        x = self.proj(id_embedding)
        return self.norm(x.reshape(-1, self.num_tokens, self.cross_attention_dim))


class IPKV(nn.Module):
    """The extra key/value projections of one cross-attention layer (``to_k_ip``/``to_v_ip``)."""

    def __init__(self, cross_attention_dim: int, hidden_size: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)


@dataclass(frozen=True)
class IDAdapterInfo:
    variant: str  # "faceid-portrait" | "faceid"
    num_tokens: int
    cross_attention_dim: int
    id_embedding_dim: int
    layer_hidden: dict[str, int]  # processor key -> hidden size (query width) of that layer
    has_lora: bool


class IDAdapter(nn.Module):
    """A loaded FaceID adapter: projection model + per-layer ID key/value projections.

    ``layers`` is keyed by the file's processor index ("1", "3", ... "31"), so ``state_dict()``
    maps 1:1 onto the public file (``image_proj.*`` / ``layers.<k>.to_k_ip.weight``).
    """

    def __init__(self, info: IDAdapterInfo):
        super().__init__()
        self.info = info
        self.image_proj = FaceIDProjection(info.cross_attention_dim, info.id_embedding_dim, info.num_tokens)
        self.layers = nn.ModuleDict({k: IPKV(info.cross_attention_dim, h) for k, h in info.layer_hidden.items()})

    @property
    def variant(self) -> str:
        return self.info.variant

    def id_tokens(self, id_embedding: torch.Tensor) -> torch.Tensor:
        """ID tokens [B,T,C] for ArcFace embeddings [E] or [B,E] (normed_embedding, as trained)."""
        e = torch.as_tensor(id_embedding).reshape(-1, self.info.id_embedding_dim)
        p = next(self.parameters())
        return self.image_proj(e.to(device=p.device, dtype=p.dtype))

    def uncond_tokens(self, batch: int = 1) -> torch.Tensor:
        """The "no identity" tokens: the projection of a zero embedding.

        IP-Adapter is trained with the embedding dropped to zeros, and its pipelines (and the
        ID-Sculpt code) put these tokens on the negative branch of classifier-free guidance.
        """
        p = next(self.parameters())
        return self.image_proj(torch.zeros(batch, self.info.id_embedding_dim, device=p.device, dtype=p.dtype))

    def photo_tokens(self, id_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) ID tokens [1, T', C] for the ArcFace embeddings [N,E] of N photos of one person.

        FaceID Portrait was trained on several photos per person: each photo's embedding is projected to
        its own T=16 tokens and the N sets are concatenated along the token axis (T' = N*T; h94's model
        card: "accepts multiple facial images to enhance similarity (the default is 5)"; tencent-ailab's
        IPAdapterFaceID projects a [B,N,512] stack and reshapes it to [B,N*T,C]; ComfyUI_IPAdapter_plus's
        "concat" does the same). Its negative branch is the projection of N zero embeddings (N identical
        sets; attention over duplicated keys/values equals attention over one set, so this matches a
        single photo's negative exactly). Plain FaceID (4 tokens, one photo in training) gets the mean
        of the embeddings, projected once (IPAdapter_plus's "average"): T' = T.
        """
        e = torch.as_tensor(id_embeddings).reshape(-1, self.info.id_embedding_dim)
        if self.info.variant == "faceid":
            e = e.mean(0, keepdim=True)
        cond = self.id_tokens(e).reshape(1, -1, self.info.cross_attention_dim)
        uncond = self.uncond_tokens(e.shape[0]).reshape(1, -1, self.info.cross_attention_dim)
        return cond, uncond

    def kv(self, key: str, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[key]
        return layer.to_k_ip(tokens), layer.to_v_ip(tokens)


def decoupled_cross_attention(
    q: torch.Tensor,
    text_out: torch.Tensor,
    k_ip: torch.Tensor,
    v_ip: torch.Tensor,
    heads: int,
    weight: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``text_out + weight * attn(q, k_ip, v_ip)`` for [B,N,heads*d] queries and [B,T,heads*d] k/v.

    ``text_out`` is the usual cross-attention output ``attn(q, k_text, v_text)`` (computed by the
    host, possibly by another patch); ``weight`` is a float or a per-row tensor [B] (0 turns the ID
    branch off for that row, which is how views without ID and the negative branch are handled).
    """
    b, n, inner = q.shape
    d = inner // heads
    if k_ip.shape[0] != b:
        k_ip = k_ip.expand(b, -1, -1) if k_ip.shape[0] == 1 else k_ip.repeat_interleave(b // k_ip.shape[0], 0)
        v_ip = v_ip.expand(b, -1, -1) if v_ip.shape[0] == 1 else v_ip.repeat_interleave(b // v_ip.shape[0], 0)
    qh = q.reshape(b, n, heads, d).transpose(1, 2)
    kh = k_ip.to(q.dtype).reshape(b, -1, heads, d).transpose(1, 2)
    vh = v_ip.to(q.dtype).reshape(b, -1, heads, d).transpose(1, 2)
    ip = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, inner)
    if isinstance(weight, torch.Tensor) and weight.dim() > 0:
        weight = weight.to(device=q.device, dtype=q.dtype).reshape(b, 1, 1)
    return text_out + weight * ip


# ----------------------------------------------------------------------------- file reading
def read_id_adapter(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """Read an IP-Adapter file into {"image_proj": {...}, "ip_adapter": {...}} without running pickles.

    The pack's one reader (core/state_dict.py) reads the file: the .bin's nested dicts and the
    .safetensors' flat ``image_proj.<key>`` names come out the same; a corrupt, unsafe or other-model
    file raises its ModelFileError (what it is, and that the FaceID Portrait file was expected)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ID adapter file not found: {path}")
    flat = read_state_dict(path, "id_adapter")
    sd: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        if head in sd and rest:
            sd[head][rest] = v
    if not sd["image_proj"] and not sd["ip_adapter"]:
        raise wrong_model_error(path, flat, "id_adapter", "no 'image_proj' and 'ip_adapter' weights")
    return sd


def _is_portrait_unnorm(sd: dict, name: str) -> bool:
    """FaceID Portrait unnorm: image_proj is a Resampler (``latents``, ``proj_in``) like IP-Adapter Plus,
    but its ``proj_in`` reads the 512-wide ArcFace embedding instead of CLIP-vision features (1024/1280
    wide). cubiq's loader tells it by 'unnorm' in the file name (and marks the dict "portraitunnorm");
    the shapes tell it without the name. A file name alone never refuses a non-Resampler file."""
    proj = sd.get("image_proj", {})
    if "latents" not in proj:
        return False
    if "portraitunnorm" in sd or "unnorm" in os.path.basename(name).lower():
        return True
    pin = proj.get("proj_in.weight")
    return pin is not None and pin.dim() == 2 and int(pin.shape[1]) == _ARCFACE_DIM


def detect_variant(sd: dict[str, dict[str, torch.Tensor]], name: str = "file") -> IDAdapterInfo:
    """Recognise a FaceID adapter from keys and shapes; raise ValueError naming what was found otherwise."""
    proj, ip = sd.get("image_proj", {}), sd.get("ip_adapter", {})
    pk = set(proj)
    if _is_portrait_unnorm(sd, name):
        pin = proj.get("proj_in.weight")
        raise ValueError(
            f"{name} is IP-Adapter FaceID Portrait unnorm (h94's ip-adapter-faceid-portrait_sdxl_unnorm: an SDXL adapter whose "
            f"ID tokens come from a perceiver Resampler over the unnormalised ArcFace embedding"
            + (f"; image_proj.proj_in {tuple(pin.shape)}" if pin is not None else "") + "): not supported; use "
            "ip-adapter-faceid-portrait-v11_sd15.bin (ID-Sculpt's choice: an MLP over the normalised embedding)")
    if any(k.startswith("perceiver_resampler.") for k in pk):
        raise ValueError(f"{name} is IP-Adapter FaceID Plus/PlusV2 (needs CLIP-vision features): not supported; use ip-adapter-faceid-portrait-v11_sd15.bin or ip-adapter-faceid_sd15.bin")
    if pk != _PROJ_KEYS:
        if "latents" in pk:
            kind = "an IP-Adapter Plus (image Resampler)"
        elif "proj.3.weight" in pk:
            kind = "an IP-Adapter Full-Face (CLIP MLP)"
        elif {"proj.weight", "norm.weight"} <= pk:
            kind = "a plain IP-Adapter (CLIP image embedding)"
        else:
            kind = "not an IP-Adapter FaceID file"
        raise ValueError(
            f"{name} is {kind}, not a FaceID adapter: image_proj keys {sorted(pk)[:8]}. "
            "Use ip-adapter-faceid-portrait-v11_sd15.bin (ID-Sculpt's choice) or ip-adapter-faceid_sd15.bin."
        )
    w0, w2, nw = proj["proj.0.weight"], proj["proj.2.weight"], proj["norm.weight"]
    e, c = int(w0.shape[1]), int(nw.shape[0])
    if w0.shape[0] != 2 * e or w2.shape[1] != 2 * e or w2.shape[0] % c:
        raise ValueError(f"{name}: FaceID projection shapes do not fit together: proj.0 {tuple(w0.shape)}, proj.2 {tuple(w2.shape)}, norm {tuple(nw.shape)}")
    tokens = int(w2.shape[0]) // c
    hidden: dict[str, int] = {}
    pairs: dict[str, set[str]] = {}
    for k, v in ip.items():
        m = _IP_KEY.match(k)
        if m:
            pairs.setdefault(m.group(1), set()).add(m.group(2))
            if v.dim() != 2 or v.shape[1] != c:
                raise ValueError(f"{name}: ip_adapter.{k} has shape {tuple(v.shape)}, expected [hidden, {c}]")
            hidden[m.group(1)] = int(v.shape[0])
    if not hidden:
        raise ValueError(f"{name}: no 'N.to_k_ip.weight' keys in ip_adapter (found e.g. {sorted(ip)[:5]}); not an IP-Adapter")
    missing = [k for k, s in pairs.items() if s != {"k", "v"}]
    if missing:
        raise ValueError(f"{name}: layers {missing} lack to_k_ip or to_v_ip")
    has_lora = any("_lora." in k for k in ip)
    variant = "faceid" if has_lora else "faceid-portrait"
    hidden = dict(sorted(hidden.items(), key=lambda kv: int(kv[0])))
    return IDAdapterInfo(variant, tokens, c, e, hidden, has_lora)


def load_id_adapter(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> IDAdapter:
    """Load a public IP-Adapter FaceID file (.bin read with weights_only, or .safetensors)."""
    name = os.path.basename(path)
    sd = read_id_adapter(path)
    info = detect_variant(sd, name)
    adapter = IDAdapter(info)
    adapter.image_proj.load_state_dict(sd["image_proj"])
    layer_sd = {f"{k}.to_{kv}_ip.weight": sd["ip_adapter"][f"{k}.to_{kv}_ip.weight"] for k in info.layer_hidden for kv in "kv"}
    adapter.layers.load_state_dict(layer_sd)
    return adapter.to(device=device, dtype=dtype).eval().requires_grad_(False)


def id_adapter_state_dict(adapter: IDAdapter) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter's weights in the public file layout (used to write test files and conversions)."""
    ip = {}
    for k, layer in adapter.layers.items():
        ip[f"{k}.to_k_ip.weight"] = layer.to_k_ip.weight.detach().cpu().contiguous()
        ip[f"{k}.to_v_ip.weight"] = layer.to_v_ip.weight.detach().cpu().contiguous()
    proj = {k: v.detach().cpu().contiguous() for k, v in adapter.image_proj.state_dict().items()}
    return {"image_proj": proj, "ip_adapter": ip}


def sd15_layer_hidden(model_channels: int = 320, channel_mult: tuple[int, ...] = (1, 2, 4, 4)) -> dict[str, int]:
    """Query width of each SD1.5 cross-attention layer, keyed like the adapter file ("1".."31")."""
    inp = [model_channels * channel_mult[i] for i in (0, 0, 1, 1, 2, 2)]
    mid = [model_channels * channel_mult[-1]]
    # Output blocks 3..5 sit at the deepest level with attention (level 2), then 6..8, 9..11.
    out = [model_channels * channel_mult[2]] * 3 + [model_channels * channel_mult[1]] * 3 + [model_channels * channel_mult[0]] * 3
    return {key: h for (_, key), h in zip(SD15_ATTN2_BLOCKS, inp + out + mid)}
