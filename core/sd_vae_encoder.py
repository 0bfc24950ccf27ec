"""The Stable Diffusion (LDM AutoencoderKL) VAE encoder as a plain PyTorch module, built from a state dict.

ISD backpropagates through the VAE encoder (render -> latents). The pack owns this encoder instead of
copying the host's live module: a host may load its VAE through a patcher that keeps the weights off
the GPU and changes the modules in place (ComfyUI's Dynamic VRAM: per-forward casts into shared
buffers, native pinned-memory handles on every layer), and a copy of such a module either cannot be
made or runs the host's cast path, whose shared buffers corrupt the weights autograd saved for the
backward pass. Here every weight is a private tensor and every layer is plain ``torch.nn``.

The layout (and so the state-dict keys) is the LDM one that ComfyUI's ``VAE.get_sd()`` returns:
``encoder.conv_in``, ``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``,
``encoder.down.{i}.attn.{j}``, ``encoder.down.{i}.downsample.conv``, ``encoder.mid.{block_1,attn_1,block_2}``,
``encoder.norm_out``, ``encoder.conv_out`` and ``quant_conv``. The configuration (channels, levels,
blocks, attention levels) is read from the tensors' shapes, so SD1.x/2.x VAEs (ch 128, mult 1,2,4,4,
two blocks a level, attention only in the middle) and smaller test VAEs alike load exactly.

Output: the diagonal-Gaussian moments [B, 2C, H/8, W/8] (mean, log-variance) after ``quant_conv``.

Memory: with ``lean_backward`` (default) and frozen weights, a forward that autograd records keeps only
what the input gradient needs (core/sd_vae_ops.py): each GroupNorm's input, and q, k, v plus the scaled
logits of the attention, not the GroupNorm/SiLU outputs, the convolutions' inputs, the padded copies or
the fp32 softmax. At 512² (bf16) that is ~0.5 GiB a view instead of ~1.6, at plain autograd's speed on an
H100; outputs are the same, input gradients within a bf16 rounding (on CUDA one Triton kernel rebuilds the
GroupNorm for SiLU's backward, see sd_vae_ops). Without a graph (no_grad, inference) or with weights that
need grad, the plain ops run.
Nothing here imports ComfyUI.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .sd_vae_ops import conv2d_input_grad_only, group_norm_silu, matmul_attention_lean, matmul_attention_plain, needs_lean

ENCODER_PREFIX = "encoder."
QUANT_CONV_PREFIX = "quant_conv."


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head self-attention over the pixels of [B,C,H,W] maps with PyTorch's fused kernel."""
    b, c = q.shape[:2]
    qf, kf, vf = (t.reshape(b, 1, c, -1).transpose(2, 3) for t in (q, k, v))  # [B,1,N,C]
    out = F.scaled_dot_product_attention(qf, kf, vf)
    return out.transpose(2, 3).reshape(q.shape)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fallback: Optional[Callable] = None,
                     max_tokens: int = 64 * 64, lean: bool = True) -> torch.Tensor:
    """The same attention as explicit matmul + softmax (softmax in fp32), differentiable.

    For the encoder's mid-block attention (one head, 512 channels, 64² tokens at 512²) PyTorch picks
    the memory-efficient kernel for a 512-wide head, whose backward is slow there (~6 ms per view on an
    H100); this form is exact and cheap at that size. Above ``max_tokens`` pixels (renders over 512²)
    the [N,N] weights grow quadratically, so ``fallback`` is used instead. lean: when autograd records
    it, keep the scaled logits (recomputing the softmax in the backward) instead of the fp32 softmax
    and its cast (sd_vae_ops.matmul_attention_lean); same values, a third of the bytes."""
    b, c = q.shape[:2]
    if fallback is not None and q.shape[2] * q.shape[3] > max_tokens:
        return fallback(q, k, v)
    qf, kf, vf = (t.reshape(b, c, -1) for t in (q, k, v))  # [B,C,N]
    recorded = torch.is_grad_enabled() and any(t.requires_grad for t in (qf, kf, vf))
    attend = matmul_attention_lean if lean and recorded else matmul_attention_plain
    return attend(qf, kf, vf).reshape(q.shape)


def _norm_act(x: torch.Tensor, norm: nn.GroupNorm, lean: bool) -> torch.Tensor:
    if lean and needs_lean(x, (norm.weight, norm.bias)):
        return group_norm_silu(x, norm)
    return F.silu(norm(x))


def _conv(x: torch.Tensor, conv: nn.Conv2d, lean: bool) -> torch.Tensor:
    if lean and needs_lean(x, (conv.weight, conv.bias)):
        return conv2d_input_grad_only(x, conv)
    return conv(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, lean: bool = True) -> None:
        super().__init__()
        self.lean = lean
        self.norm1, self.conv1 = _group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _conv(_norm_act(x, self.norm1, self.lean), self.conv1, self.lean)
        h = _conv(_norm_act(h, self.norm2, self.lean), self.conv2, self.lean)  # dropout 0 (inference)
        return (x if self.nin_shortcut is None else _conv(x, self.nin_shortcut, self.lean)) + h


class AttnBlock(nn.Module):
    """Self-attention over pixels; ``optimized_attention(q, k, v)`` is the kernel (swappable, as in ComfyUI)."""

    def __init__(self, channels: int, attention: Callable, lean: bool = True) -> None:
        super().__init__()
        self.lean = lean
        self.norm = _group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))
        self.optimized_attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)  # GroupNorm alone (no SiLU): autograd keeps x; the 1x1 convs below keep nothing
        q, k, v = (_conv(h, conv, self.lean) for conv in (self.q, self.k, self.v))
        return x + _conv(self.optimized_attention(q, k, v), self.proj_out, self.lean)


class Downsample(nn.Module):
    def __init__(self, channels: int, lean: bool = True) -> None:
        super().__init__()
        self.lean = lean
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv(F.pad(x, (0, 1, 0, 1)), self.conv, self.lean)  # LDM's asymmetric padding


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int
    ch: int
    level_channels: tuple[int, ...]  # output channels of each level's ResNet blocks
    num_res_blocks: int
    attn_levels: tuple[int, ...]  # levels with per-block attention (none in SD1.x/2.x)
    out_channels: int  # conv_out: 2 * z_channels (moments)
    quant_channels: Optional[int]  # quant_conv output channels, None when the VAE has none

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "EncoderConfig":
        """Read the configuration from the shapes of an LDM VAE state dict (``encoder.*`` keys)."""
        need = [ENCODER_PREFIX + k for k in ("conv_in.weight", "conv_out.weight", "mid.attn_1.q.weight")]
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"not an SD (LDM AutoencoderKL) VAE state dict: keys {missing} are missing "
                             "(ISD needs an SD1.5-style VAE, e.g. sd-vae-ft-mse)")
        conv_in = sd[ENCODER_PREFIX + "conv_in.weight"]
        levels, blocks, attn = set(), set(), set()
        for k in sd:
            m = re.match(r"encoder\.down\.(\d+)\.(block|attn)\.(\d+)\.", k)
            if m:
                levels.add(int(m.group(1)))
                if m.group(2) == "block":
                    blocks.add(int(m.group(3)))
                else:
                    attn.add(int(m.group(1)))
        if not levels or levels != set(range(len(levels))) or blocks != set(range(len(blocks))):
            raise ValueError("VAE encoder state dict has no (or non-contiguous) encoder.down.* levels")
        last = max(blocks)
        level_channels = tuple(int(sd[f"{ENCODER_PREFIX}down.{i}.block.{last}.conv2.weight"].shape[0]) for i in range(len(levels)))
        qc = sd.get(QUANT_CONV_PREFIX + "weight")
        return cls(in_channels=int(conv_in.shape[1]), ch=int(conv_in.shape[0]), level_channels=level_channels,
                   num_res_blocks=len(blocks), attn_levels=tuple(sorted(attn)),
                   out_channels=int(sd[ENCODER_PREFIX + "conv_out.weight"].shape[0]),
                   quant_channels=None if qc is None else int(qc.shape[0]))


class _EncoderTrunk(nn.Module):
    def __init__(self, cfg: EncoderConfig, attention: Callable, lean: bool = True) -> None:
        super().__init__()
        self.lean = lean
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = cfg.ch
        n = len(cfg.level_channels)
        for i, c_out in enumerate(cfg.level_channels):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c, c_out, lean))
                c = c_out
                if i in cfg.attn_levels:
                    level.attn.append(AttnBlock(c, attention, lean))
            if i != n - 1:
                level.downsample = Downsample(c, lean)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(c, c, lean), AttnBlock(c, attention, lean), ResnetBlock(c, c, lean)
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _conv(x, self.conv_in, self.lean)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return _conv(_norm_act(h, self.norm_out, self.lean), self.conv_out, self.lean)


class SDVAEEncoder(nn.Module):
    """Image in [-1, 1] [B,3,H,W] -> moments [B,2C,H/8,W/8] (encoder + quant_conv), plain PyTorch.

    math_attention: the attention blocks use ``matmul_attention`` (SDPA above 64² pixels); False: SDPA.
    lean_backward: under autograd with frozen weights keep only what the input gradient needs
    (core/sd_vae_ops.py: same outputs and gradients, ~1/3 of the saved bytes); False: plain autograd."""

    def __init__(self, cfg: EncoderConfig, math_attention: bool = True, lean_backward: bool = True) -> None:
        super().__init__()
        self.config = cfg
        attention = (functools.partial(matmul_attention, fallback=sdpa_attention, lean=lean_backward)
                     if math_attention else sdpa_attention)
        self.encoder = _EncoderTrunk(cfg, attention, lean_backward)
        self.quant_conv = nn.Conv2d(cfg.out_channels, cfg.quant_channels, 1) if cfg.quant_channels is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return z if self.quant_conv is None else _conv(z, self.quant_conv, self.encoder.lean)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, math_attention: bool = True,
                        lean_backward: bool = True) -> "SDVAEEncoder":
        """Build from a whole VAE state dict (decoder keys are ignored), with private copies of the weights.

        Every tensor is copied (``copy=True``) onto ``device`` / ``dtype``: nothing is shared with the
        host's module, so the host may move, cast or free its own weights afterwards, and they are built
        outside ``torch.inference_mode``: ordinary tensors autograd can use."""
        cfg = EncoderConfig.from_state_dict(sd)
        with torch.inference_mode(False):  # the host's weights may be inference tensors; ours must not be
            with torch.device("meta"):
                enc = cls(cfg, math_attention=math_attention, lean_backward=lean_backward)
            own = {}
            for k in enc.state_dict():
                if k not in sd:
                    raise ValueError(f"VAE state dict lacks {k!r} for an encoder of config {cfg}")
                own[k] = _private_tensor(sd[k], k, device, dtype)
            enc.load_state_dict(own, strict=True, assign=True)
        return enc.requires_grad_(False).eval()


def _private_tensor(t, key: str, device, dtype: torch.dtype) -> torch.Tensor:
    if hasattr(t, "dequantize") and not isinstance(t, torch.nn.Parameter) and type(t) is not torch.Tensor:
        t = t.dequantize()  # host-side quantised storage (e.g. fp8 with a scale): the real values
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"VAE weight {key!r} is a {type(t).__name__}, not a tensor")
    if t.device.type == "meta":
        raise ValueError(f"VAE weight {key!r} is not materialised (meta tensor): the VAE's weights were never loaded")
    out = torch.empty(t.shape, device=device, dtype=dtype)
    out.copy_(t.detach())
    return out
