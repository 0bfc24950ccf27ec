"""The one reader of weight files, with one error policy.

Every loader of the pack (ID adapter, VGG16 and LPIPS weights, PanoHead, the evaluation models)
reads tensors through :func:`read_state_dict`; nothing here runs code from a file: ``.safetensors``
hold only tensors and torch files (zip or legacy format) are read with ``torch.load(weights_only=True)``.
The file's bytes decide the format, not its extension (a ``.bin`` holding safetensors reads).

When a file cannot be used the error is a :class:`ModelFileError` (a ValueError) naming the real cause:

* ``corrupt``: the bytes are no weight file at all (random data, an HTML error page), or the file
  ends early (a safetensors header describing more bytes than the file has, a zip without its
  directory, a pickle that stops before its end). The message names the file, its size, what its
  format says is missing, and the file the loader expected (which model, from where).
* ``unsafe``: a well-formed pickle that names Python objects other than tensors; loading it would
  construct them by running code, so it is refused. The message says it is not a plain weights file
  and where the official file comes from. torch's own text for this case (which suggests turning the
  safety check off) is deliberately not passed on.
* ``wrong``: readable weights of another model. :func:`describe_weights` recognises the common
  kinds by their keys and shapes (SD checkpoints and UNets, ControlNet, VAE, IP-Adapter variants,
  LoRA, VGG16, AlexNet, LPIPS channel weights, PanoHead, RealESRGAN, CLIP) and
  :func:`wrong_model_error` says what the file is and what was expected.

The expected file is named by its model-table key (core/models.py): role, canonical file name, source.
"""
from __future__ import annotations

import io
import json
import os
import pickletools
import re
import struct
import warnings
import zipfile
from typing import Any, Mapping, Optional

import torch

from .models import get_spec

#: first pickle of torch's legacy (pre-1.6) format: protocol 2, then the magic number 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
#: a safetensors header larger than this is not a header (the real ones are kilobytes to a few MB)
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

#: what each table entry's loader wants, as (kind id used by describe_weights, phrase for "not <phrase>")
EXPECTED_KIND: dict[str, tuple[str, str]] = {
    "id_adapter": ("ip_adapter_faceid", "an IP-Adapter FaceID file"),
    "panohead": ("panohead", "a PanoHead generator"),
    "vgg16": ("vgg16", "VGG16 backbone weights"),
    "lpips_vgg": ("lpips_vgg", "the LPIPS v0.1 VGG channel weights"),
    "lpips_alex": ("alexnet", "AlexNet backbone weights"),
    "lpips_lin": ("lpips_alex", "the LPIPS v0.1 AlexNet channel weights"),
    "clip_vision": ("clip_vision", "a CLIP vision model"),
}


class ModelFileError(ValueError):
    """A model file that cannot be used. ``kind``: "corrupt", "unsafe" or "wrong"."""

    def __init__(self, message: str, kind: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path


# --------------------------------------------------------------------------- messages
def size_text(n: int) -> str:
    """'5,000 bytes' or '12.3 MB (12,345,678 bytes)'."""
    if n < 1_000_000:
        return f"{n:,} bytes"
    return f"{n / 1e9:.2f} GB ({n:,} bytes)" if n >= 1e9 else f"{n / 1e6:.1f} MB ({n:,} bytes)"


def expected_text(expected: Optional[str]) -> str:
    """"'ip-adapter-….bin' in models/ipadapter (role: …; from Hugging Face `h94/…`)" for a table key (or free text)."""
    if not expected:
        return "a model weight file"
    try:
        spec = get_spec(expected)
    except KeyError:
        return expected
    return f"{spec.filename!r} in models/{spec.folder} (role: {spec.role}; from {spec.source})"


def _expected_phrase(expected: Optional[str]) -> str:
    if expected in EXPECTED_KIND:
        return EXPECTED_KIND[expected][1]
    try:
        return "the " + get_spec(expected).role if expected else "the expected model"
    except KeyError:
        return str(expected)


def corrupt_error(path: str, reason: str, expected: Optional[str] = None) -> ModelFileError:
    """"<file> (<size>) is corrupt or truncated: <reason>. Expected …; download it again …"."""
    name, size = os.path.basename(path), _size(path)
    return ModelFileError(
        f"{name} ({size_text(size)}) is corrupt or truncated: {reason}. Expected {expected_text(expected)}. "
        "Download it again (an interrupted download or copy leaves a short file) and compare its size with the source's.",
        "corrupt", path)


def unsafe_error(path: str, names: list[str], expected: Optional[str] = None) -> ModelFileError:
    name = os.path.basename(path)
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return ModelFileError(
        f"{name} is not a plain weights file: its pickle names Python objects ({shown}) that loading would "
        f"construct by running code, so it was not loaded. Expected {expected_text(expected)}: use the official "
        "file from that source (or its .safetensors version).", "unsafe", path)


def wrong_model_error(name: str, weights: Mapping[str, Any], expected: Optional[str], detail: str = "",
                      kind: Optional[str] = None) -> ModelFileError:
    """The file holds readable weights, but not the expected model: say what it is (when recognised).
    ``expected``: a table key or free text; ``kind``: the describe_weights kind the caller wants
    (default: the key's, from EXPECTED_KIND)."""
    name = os.path.basename(name)
    found = describe_weights(weights)
    want_kind = kind or EXPECTED_KIND.get(expected or "", ("", ""))[0]
    phrase = {k: p for k, p in EXPECTED_KIND.values()}.get(want_kind) or _expected_phrase(expected)
    if found is not None and found[0] == want_kind:  # the right kind, but it does not fit (size, missing parts)
        head = f"{name} looks like {found[1]} but does not load" + (f": {detail}" if detail else "")
    elif found is not None:
        head = f"{name} is {found[1]}, not {phrase}" + (f" ({detail})" if detail else "")
    else:
        keys = sorted(weights)[:6]
        head = f"{name} is not {phrase}" + (f": {detail}" if detail else "") + f" (its keys: e.g. {keys})"
    tail = "; choose that file for this input" if expected in EXPECTED_KIND else ""
    return ModelFileError(f"{head}. Expected {expected_text(expected)}{tail}.", "wrong")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# --------------------------------------------------------------------------- format sniffing
def file_format(path: str) -> str:
    """What the bytes are: "safetensors", "torch-zip", "torch-legacy", "pickle", "empty" or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_TORCH_LEGACY_HEAD):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= _MAX_SAFETENSORS_HEADER:
        return "safetensors"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _not_weights_reason(path: str, fmt: str) -> str:
    if fmt == "empty":
        return "it is empty (0 bytes)"
    if _size(path) < 64:
        return f"it is only {_size(path)} bytes long, far too short for any weight file"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.lstrip().startswith((b"<", b"{")):
        return ("it is a text file (it starts with " + repr(head.lstrip()[:6].decode("ascii", "replace")) +
                ", e.g. a web page saved instead of the file), not a safetensors, PyTorch or pickle weight file")
    return f"it is not a safetensors, PyTorch or pickle weight file (it starts with the bytes {head.hex(' ')})"


def _safetensors_header(path: str) -> tuple[dict, int]:
    """(header, byte count the header says the file has); raises corrupt-style ValueError text."""
    size = _size(path)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if 8 + n > size:
            raise ValueError(f"its safetensors header says {n:,} header bytes, but the file ends after {size - 8:,}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"its safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("its safetensors header is not a table of tensors")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    return header, 8 + n + end


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """name -> shape from a safetensors header alone (no tensor data read)."""
    header, _ = _safetensors_header(path)
    return {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _scan_torch_pickle(path: str, fmt: str) -> tuple[list[str], Optional[str]]:
    """``scan_pickle`` of a torch file's object pickle(s): ``data.pkl`` of a zip, else the file's
    leading pickles (legacy format: magic number, protocol, system info, object, storage keys)."""
    if fmt == "torch-zip":
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                raise ValueError("the zip holds no data.pkl: it is a zip archive, not a PyTorch file")
            return scan_pickle(io.BytesIO(z.read(member)), 1)
    with open(path, "rb") as f:
        return scan_pickle(f, 5 if fmt == "torch-legacy" else 1)


def scan_pickle(stream: Any, count: int = 1) -> tuple[list[str], Optional[str]]:
    """Walk up to ``count`` consecutive pickles opcode by opcode (pickletools: nothing is constructed).

    Returns (the globals they name, a problem: None, or where the bytes stop being a pickle). torch's
    legacy format starts with five pickles in a row; a zip's data.pkl and a plain pickle are one.
    ``stream``: a binary file object positioned at the first pickle.
    """
    names: list[str] = []
    for _ in range(count):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        last: Any = None
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                    strings.append(str(arg))
                    last = arg
                    continue
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = last
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = last
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    last = memo.get(int(arg))
                    if isinstance(last, str):
                        strings.append(last)
                    continue
                last = None
        except ValueError as e:
            where = f"byte {stream.tell():,}"
            msg = str(e)
            if "exhausted" in msg or "remain" in msg or "not enough data" in msg:
                return names, f"its pickle stops at {where} before its end"
            return names, f"its pickle holds invalid data near {where} ({msg.split(',')[-1].strip()})"
    return names, None


#: globals a plain torch state dict may name (torch.load(weights_only=True) accepts these)
_PLAIN_GLOBAL = re.compile(r"^(torch(\.|$)|collections\.OrderedDict$|builtins\.(set|frozenset|slice)$|_codecs\.encode$)")


def check_weight_file(path: str, expected: Optional[str] = None) -> str:
    """Check a weight file's structure without reading its tensors: the format, or a ModelFileError
    (corrupt / unsafe). A cheap test for files another library loads (e.g. a CLIP folder's weights)."""
    fmt = file_format(path)
    if fmt in ("empty", "unknown"):
        raise corrupt_error(path, _not_weights_reason(path, fmt), expected)
    if fmt == "safetensors":
        try:
            _, need = _safetensors_header(path)
        except ValueError as e:
            raise corrupt_error(path, str(e), expected) from None
        if need > _size(path):
            raise corrupt_error(path, f"its safetensors header describes {size_text(need)}, the file has {_size(path):,}", expected)
        return fmt
    if fmt == "torch-zip" and not zipfile.is_zipfile(path):
        raise corrupt_error(path, "it is a zip (PyTorch) file without its directory at the end: the file was cut short", expected)
    try:
        names, problem = _scan_torch_pickle(path, fmt)
    except (ValueError, zipfile.BadZipFile, OSError) as e:
        raise corrupt_error(path, str(e), expected) from None
    if problem:
        raise corrupt_error(path, problem, expected)
    foreign = sorted({n for n in names if not _PLAIN_GLOBAL.match(n)})
    if foreign:
        raise unsafe_error(path, foreign, expected)
    return fmt


# --------------------------------------------------------------------------- reading
def load_weights(path: str, expected: Optional[str] = None) -> Any:
    """The object stored in a weight file (a dict of tensors, possibly nested), read without running
    code; a :class:`ModelFileError` when the file is corrupt, truncated or not plain weights."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = file_format(path)
    if fmt in ("empty", "unknown"):
        raise corrupt_error(path, _not_weights_reason(path, fmt), expected)
    if fmt == "safetensors":
        check_weight_file(path, expected)
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # SafetensorError: a damaged header or offsets
            raise corrupt_error(path, f"safetensors could not read it ({str(e).splitlines()[0]})", expected) from None
    if fmt == "torch-zip" and not zipfile.is_zipfile(path):
        raise corrupt_error(path, "it is a zip (PyTorch) file without its directory at the end: the file was cut short", expected)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; the refusal is explained below
            warnings.simplefilter("ignore", UserWarning)
            # weights_only=True: tensors and plain containers only; no code stored in the file runs.
            # A file object, not the path: torch picks a reader by the extension (.safetensors) otherwise.
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _classify_torch_failure(path, fmt, e, expected) from None


def _classify_torch_failure(path: str, fmt: str, exc: BaseException, expected: Optional[str]) -> ModelFileError:
    """Why torch.load refused: a damaged file, or a pickle naming code objects. torch's message is
    never passed on whole (it recommends disabling the safety check)."""
    try:
        names, problem = _scan_torch_pickle(path, fmt)
    except (ValueError, zipfile.BadZipFile, OSError) as e:
        return corrupt_error(path, str(e), expected)
    if problem:
        return corrupt_error(path, problem, expected)
    foreign = sorted({n for n in names if not _PLAIN_GLOBAL.match(n)})
    if foreign:
        return unsafe_error(path, foreign, expected)
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    m = re.search(r"expected (\d+) more bytes", msg)
    if m:
        return corrupt_error(path, f"its tensor data ends {int(m.group(1)):,} bytes early", expected)
    if fmt == "pickle":  # a well-formed pickle of plain data, not written by torch.save
        return ModelFileError(f"{os.path.basename(path)} is a plain Python pickle, not a PyTorch weights file. "
                              f"Expected {expected_text(expected)}.", "wrong", path)
    if "weights" in msg.lower() and "only" in msg.lower():  # torch's refusal text, without a named global
        msg = "the pickle holds something other than tensors"
    return corrupt_error(path, f"PyTorch could not read it ({msg})", expected)


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts of tensors -> one flat dict with '.'-joined keys (non-tensor leaves dropped)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if torch.is_tensor(v):
                out[f"{prefix}{k}"] = v
            elif isinstance(v, Mapping):
                out.update(flatten_tensors(v, f"{prefix}{k}."))
    return out


def read_state_dict(path: str, expected: Optional[str] = None) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a weight file (safetensors, or torch read with
    ``weights_only=True``). A top-level ``state_dict`` entry (Lightning-style checkpoints) is
    unwrapped; nested dicts are flattened with '.' (IP-Adapter's ``image_proj`` / ``ip_adapter``
    become ``image_proj.<key>`` as in its safetensors version). ``expected``: the model-table key of
    the file the caller wants, named in every error."""
    obj = load_weights(path, expected)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    sd = flatten_tensors(obj)
    if not sd:
        what = f"a {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else "")
        raise ModelFileError(f"{os.path.basename(path)} holds no tensors ({what}). Expected {expected_text(expected)}.",
                             "wrong", path)
    return sd


# --------------------------------------------------------------------------- recognising weights
def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v or ())


def _sd_version(shapes: Mapping[str, tuple]) -> str:
    """SD family from the text-context width of any cross-attention key projection."""
    for k, s in shapes.items():
        if k.endswith("attn2.to_k.weight") and len(s) == 2:
            return {768: "1.x", 1024: "2.x", 2048: "XL"}.get(s[1], "")
    return ""


def _lin_channels(shapes: Mapping[str, tuple]) -> tuple[int, ...]:
    lins = {}
    for k, s in shapes.items():
        m = re.search(r"(?:^|\.)lin(\d)\.model\.1\.weight$", k)
        if m and len(s) == 4:
            lins[int(m.group(1))] = s[1]
    return tuple(lins[i] for i in sorted(lins)) if sorted(lins) == list(range(len(lins))) else ()


def _conv_stack(shapes: Mapping[str, tuple]) -> list[tuple]:
    """Shapes of a torchvision ``features`` conv stack (features.N / sliceK.N / bare N), in layer order."""
    convs = {}
    for k, s in shapes.items():
        m = re.search(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.weight$", k) or re.fullmatch(r"(\d+)\.weight", k)
        if m and len(s) == 4:
            convs[int(m.group(1))] = s
    return [convs[i] for i in sorted(convs)]


def describe_weights(weights: Mapping[str, Any]) -> Optional[tuple[str, str]]:
    """(kind id, description) of a state dict (tensors or shapes by name), recognised by its keys;
    None when it is none of the kinds known here."""
    shapes = {str(k): _shape(v) for k, v in weights.items()}
    keys = list(shapes)

    def has(pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.search(k) for k in keys)

    if has(r"(^|\.)image_proj\.") and has(r"(^|\.)ip_adapter\."):
        if has(r"image_proj\.perceiver_resampler\."):
            return "ip_adapter_other", "an IP-Adapter FaceID Plus/PlusV2 file (needs CLIP-vision features)"
        if has(r"image_proj\.latents$"):
            pin = next((s for k, s in shapes.items() if k.endswith("image_proj.proj_in.weight")), ())
            if len(pin) == 2 and pin[1] == 512:
                return "ip_adapter_other", "an IP-Adapter FaceID Portrait unnorm file (SDXL, Resampler over ArcFace)"
            return "ip_adapter_other", "an IP-Adapter Plus file (CLIP image Resampler)"
        if has(r"image_proj\.proj\.3\.weight$"):
            return "ip_adapter_other", "an IP-Adapter Full-Face file"
        if has(r"image_proj\.proj\.0\.weight$"):
            w2 = next((s for k, s in shapes.items() if k.endswith("image_proj.proj.2.weight")), ())
            nw = next((s for k, s in shapes.items() if k.endswith("image_proj.norm.weight")), ())
            tokens = f", {w2[0] // nw[0]} ID tokens" if w2 and nw and nw[0] else ""
            lora = ", with LoRA weights" if has(r"_lora\.") else ""
            return "ip_adapter_faceid", f"an IP-Adapter FaceID file{tokens}{lora}"
        if has(r"image_proj\.proj\.weight$"):
            return "ip_adapter_other", "a plain IP-Adapter file (CLIP image embedding)"
        return "ip_adapter_other", "an IP-Adapter file"
    ver = _sd_version(shapes)
    sd = f"Stable Diffusion {ver}" if ver else "Stable Diffusion"
    if has(r"input_hint_block\.|controlnet_cond_embedding\."):
        return "controlnet", f"a ControlNet ({sd})"
    if has(r"^lora_(unet|te)|\.lora_(down|up)\.|\.lora_[AB]\.|\.lora\.(down|up)\."):
        return "lora", "a LoRA"
    if has(r"^model\.diffusion_model\."):
        if has(r"^conditioner\.embedders\."):
            return "sd_checkpoint", "a Stable Diffusion XL checkpoint"
        if has(r"^first_stage_model\.") or has(r"^cond_stage_model\."):
            return "sd_checkpoint", f"a {sd} checkpoint (UNet + VAE + text encoder)"
        return "sd_unet", f"a {sd} UNet (diffusion model weights)"
    if has(r"(^|\.)input_blocks\.0\.0\.weight$") and has(r"(^|\.)out\.2\.weight$"):
        return "sd_unet", f"a {sd} UNet (diffusion model weights)"
    if has(r"(^|\.)down_blocks\.0\.") and has(r"(^|\.)time_embedding\."):
        return "sd_unet", f"a diffusers {sd} UNet"
    if has(r"(^|\.)encoder\.conv_in\.weight$") and has(r"(^|\.)decoder\.conv_out\.weight$"):
        return "vae", "a VAE (image autoencoder, e.g. sd-vae-ft-mse)"
    if has(r"(^|\.)backbone\.synthesis\.") and has(r"(^|\.)(superresolution|decoder\.net)\."):
        return "panohead", "a PanoHead/EG3D tri-plane generator"
    if has(r"(^|\.)synthesis\.b4\.const$") and has(r"(^|\.)mapping\.fc0\."):
        return "stylegan", "a StyleGAN generator"
    if has(r"(^|\.)conv_first\.weight$") and has(r"(^|\.)body\.\d+\.rdb1\.conv1\.weight$"):
        return "upscaler", "a RealESRGAN/ESRGAN upscaler (RRDBNet)"
    if has(r"(^|\.)model\.1\.sub\.\d+\.RDB1\.") or has(r"^(params|params_ema)\.body\.\d+\.weight$"):
        return "upscaler", "an ESRGAN-type upscaler"
    if has(r"(^|\.)vision_model\.embeddings\.patch_embedding\.weight$"):
        if has(r"(^|\.)text_model\."):
            return "clip", "a CLIP model (vision + text)"
        return "clip_vision", "a CLIP vision encoder"
    if has(r"(^|\.)visual\.(conv1|transformer)\."):
        return "clip", "a CLIP model (OpenAI/open_clip layout)"
    if has(r"(^|\.)text_model\.encoder\.") or has(r"(^|\.)transformer\.text_model\."):
        return "clip_text", "a CLIP text encoder"
    lins = _lin_channels(shapes)
    backbone = has(r"(^|\.)net\.slice\d\.")
    if lins:
        kind = {(64, 128, 256, 512, 512): ("lpips_vgg", "the LPIPS v0.1 VGG channel weights (vgg.pth)"),
                (64, 192, 384, 256, 256): ("lpips_alex", "the LPIPS v0.1 AlexNet channel weights (alex.pth)"),
                (64, 128, 256, 384, 384, 512, 512): ("lpips_squeeze", "the LPIPS v0.1 SqueezeNet channel weights (squeeze.pth)")}.get(lins)
        if kind and backbone:
            return kind[0] + "_full", "a full LPIPS model (backbone + " + kind[1][4:] + ")"
        if kind:
            return kind
    convs = _conv_stack(shapes)
    if convs and convs[0][1:] == (3, 3, 3) and convs[0][0] == 64:
        n = len(convs)
        name = {8: "VGG11", 10: "VGG13", 13: "VGG16", 16: "VGG19"}.get(n, f"a VGG-style network ({n} convolutions)")
        cls = any(k.endswith("classifier.6.weight") and s[:1] == (1000,) for k, s in shapes.items())
        kind = "vgg16" if n == 13 else "vgg_other"
        return kind, f"{'torchvision ' if cls else ''}{name} weights" + (" (ImageNet classifier included)" if cls else "")
    if convs and convs[0][1:] == (3, 11, 11):
        return "alexnet", "AlexNet weights (torchvision layout)"
    if has(r"(^|\.)layer1\.0\.conv1\.weight$") and has(r"(^|\.)conv1\.weight$"):
        return "resnet", "a ResNet"
    return None
