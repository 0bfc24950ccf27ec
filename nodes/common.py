"""Small helpers shared by the node files: progress/interrupt adapter, image conversion, model folders.

``core`` never imports ComfyUI. Long loops in core take a ``progress(step, total, preview)``
callback and an ``interrupt()`` callable; :class:`ComfyProgress` is the ComfyUI side of that contract,
so every node drives the UI progress bar and honours the Cancel button the same way.
"""
from __future__ import annotations

import dataclasses

import os
from typing import Optional

import numpy as np
import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ..core.models import missing_model_message

#: Our own model folder, ``models/idsculpt`` (PanoHead, VGG16 and other weights no core folder fits).
IDSCULPT_FOLDER = "idsculpt"
#: Weight files we accept in our folders.
MODEL_EXTENSIONS = {".safetensors", ".pth", ".pt", ".pkl", ".ckpt", ".bin", ".onnx"}


# --------------------------------------------------------------------------- progress + interrupt
class ComfyProgress:
    """Adapter from core's ``progress``/``interrupt`` callbacks to ComfyUI.

    ``progress(step, total, preview)`` updates the node's progress bar; ``preview`` is an image
    tensor ([H,W,3] or [B,H,W,3] in 0..1, first of the batch shown) or None, sent as a JPEG like
    the samplers' live previews. ``interrupt()`` raises ComfyUI's InterruptProcessingException when
    the user pressed Cancel: core calls it once per iteration so a long optimisation stops promptly.
    """

    def __init__(self, total: int, preview_size: int = 512) -> None:
        self.total = max(int(total), 1)
        self.preview_size = int(preview_size)
        self.bar = comfy.utils.ProgressBar(self.total)

    def progress(self, step: int, total: Optional[int] = None, preview: Optional[torch.Tensor] = None) -> None:
        if total is not None:
            self.total = max(int(total), 1)
        pil = None
        if preview is not None:
            pil = tensor_to_pil(preview)
        self.bar.update_absolute(min(int(step), self.total), self.total, None if pil is None else ("JPEG", pil, self.preview_size))
        # The server's progress hook already checks for interruption, but ProgressBar has no hook
        # outside a running server (direct calls, tests): check here too, it costs nothing.
        self.interrupt()

    @staticmethod
    def interrupt() -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()

    # make the adapter itself usable as ``progress=`` (core calls progress(step, total, preview))
    __call__ = progress


def progress_callbacks(total: int) -> tuple:
    """``(progress, interrupt)`` for a core function with ``total`` steps."""
    p = ComfyProgress(total)
    return p.progress, p.interrupt


# --------------------------------------------------------------------------- trainable copies
def trainable(value, into: Optional[torch.nn.Module] = None):
    """A copy of a ComfyUI value that an optimisation may use: the one way out of inference mode.

    ComfyUI runs nodes under ``torch.inference_mode()``, so the tensors other nodes hand over are inference
    tensors, which autograd refuses to save. Tensors are cloned (outside inference mode) through nested
    dataclasses (HeadMesh, GanViews, ReferenceGeometry, Cameras), dicts, lists and tuples; anything else is
    returned as is. A module is copied into ``into`` (a fresh instance of its architecture) through its state
    dict. The caller's value is never changed (no node mutates another node's output).
    """
    with torch.inference_mode(False):
        if isinstance(value, torch.nn.Module):
            if into is None:
                raise ValueError("trainable(module) needs a fresh module to copy the weights into")
            into.load_state_dict({k: v.detach().clone() for k, v in value.state_dict().items()}, strict=True)
            return into
        return _cloned(value)


def _cloned(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _cloned(getattr(x, f.name)) for f in dataclasses.fields(x) if f.init})
    if isinstance(x, dict):
        return {k: _cloned(v) for k, v in x.items()}
    if type(x) in (list, tuple):  # plain ones (a namedtuple keeps its fields as they are)
        return type(x)(_cloned(v) for v in x)
    return x


# --------------------------------------------------------------------------- images
def image_to_core(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] (0..1) → core image batch [B,H,W,3] float32 (RGB, contiguous copy).

    A copy, because IMAGE tensors that come from other nodes are inference tensors: the copy can
    be used in an ``inference_mode(False)`` optimisation. Alpha is dropped, gray is expanded.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"expected an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"IMAGE must be [B,H,W,C], got shape {tuple(image.shape)}")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    elif c != 3:
        raise ValueError(f"IMAGE must have 1, 3 or 4 channels, got {c}")
    return image.detach().to(torch.float32).clone().contiguous()


def core_to_image(image: torch.Tensor) -> torch.Tensor:
    """core image ([H,W,3] or [B,H,W,3], any float range) → ComfyUI IMAGE [B,H,W,3] float32 on CPU in 0..1.

    NaNs become 0 so no NaN reaches another node.
    """
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[-1] not in (1, 3):
        raise ValueError(f"core image must be [B,H,W,3], got shape {tuple(image.shape)}")
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    return torch.nan_to_num(image.detach().to(device="cpu", dtype=torch.float32), nan=0.0).clamp(0, 1).contiguous()


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK [B,H,W] or core mask [B,H,W,1] → IMAGE [B,H,W,3]."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(-1)
    return core_to_image(mask.expand(-1, -1, -1, 3))


def tensor_to_pil(image: torch.Tensor):
    """First image of a [H,W,3]/[B,H,W,3] 0..1 tensor as a PIL RGB image."""
    from PIL import Image

    img = core_to_image(image)[0]
    return Image.fromarray((img.numpy() * 255.0).round().astype(np.uint8))


# --------------------------------------------------------------------------- model folders
def model_folder(name: str = IDSCULPT_FOLDER, extensions: Optional[set] = None) -> list[str]:
    """Register ``models/<name>`` with ComfyUI (once) and return its search paths.

    Keeps any paths the user added for ``name`` in extra_model_paths.yaml (those are registered
    before custom nodes load, with an empty extension set), adds ``<models_dir>/<name>`` as the
    default, and sets the accepted extensions so ``get_filename_list(name)`` lists weight files only.
    """
    exts = set(extensions or MODEL_EXTENSIONS)
    default = os.path.join(folder_paths.models_dir, name)
    if name in folder_paths.folder_names_and_paths:
        paths, old_exts = folder_paths.folder_names_and_paths[name]
        paths = list(paths)
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[name] = (paths, set(old_exts) | exts)
    else:
        folder_paths.folder_names_and_paths[name] = ([default], exts)
    return folder_paths.get_folder_paths(name)


def model_files(name: str = IDSCULPT_FOLDER) -> list[str]:
    """Files in a registered model folder (for a Combo input); registers ``name`` if needed."""
    if name not in folder_paths.folder_names_and_paths:
        model_folder(name)
    return folder_paths.get_filename_list(name)


def model_path(name: str, filename: str, key: Optional[str] = None) -> str:
    """Full path of ``filename`` in model folder ``name``; when it is not there, a FileNotFoundError
    carrying the model table's message (core/models.py: which file, which folder, where to get it).
    ``key``: the table entry this loader reads (else it is looked up from the file name)."""
    path = folder_paths.get_full_path(name, filename)
    if path is None:
        dirs = list(folder_paths.get_folder_paths(name)) if name in folder_paths.folder_names_and_paths else []
        raise FileNotFoundError(missing_model_message(filename, name, dirs, key=key))
    return path


# Register our folder at import, so extra_model_paths.yaml entries and Combo lists work from the start.
model_folder(IDSCULPT_FOLDER)
