"""Reading the released PanoHead pickle without running code from it, and the converted format.

The release (``easy-khair-180-gpc0.8-trans10-025000.pkl``) is a plain ``pickle`` of a dict
``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}`` whose networks are
``torch_utils.persistence`` objects: each one pickles as ``_reconstruct_persistent_obj(meta)``
where ``meta`` holds the *source code of its module*, which the normal loader ``exec``s. That is
arbitrary code execution by design. Here a restricted unpickler maps every global the file names
to an inert placeholder, except a short allow-list of data constructors (OrderedDict, tensor and
storage rebuilders that go through ``torch.load(weights_only=True)``, numpy scalars/dtypes). From
the resulting tree of placeholders we read only: the class name, ``_init_args``/``_init_kwargs``,
``rendering_kwargs``, ``neural_rendering_resolution`` and the parameters/buffers. The stored
source is never looked at, let alone run.

The conversion writes ``<name>.safetensors`` (the ``G_ema`` state dict, keys as in the release)
and ``<name>.json`` (class name + init kwargs + rendering kwargs); loading from then on uses those.
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
from typing import Any, Optional

import numpy as np
import torch

from ..models import missing_model_message
from ..state_dict import (ModelFileError, check_weight_file, corrupt_error, expected_text, file_format, flatten_tensors,
                          read_state_dict, scan_pickle, wrong_model_error)
from .triplane import TriPlaneGenerator

RELEASE_FILENAME = "easy-khair-180-gpc0.8-trans10-025000.pkl"
FORMAT_VERSION = 1


class _Inert:
    """Stands in for any object the pickle constructs from a non-allow-listed global."""

    _global_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE: cls(*args) -> only records
        self._args = args
        self._kwargs = kwargs
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:  # BUILD: only records
        self._state = state

    def __repr__(self) -> str:
        return f"<inert {self._global_name}>"


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _INERT_CLASSES:
        _INERT_CLASSES[key] = type(f"Inert_{name}", (_Inert,), {"_global_name": key})
    return _INERT_CLASSES[key]


class PersistentRecord:
    """What a ``torch_utils.persistence`` object becomes: its class name and pickled state."""

    def __init__(self, meta: Any) -> None:
        meta = dict(meta) if isinstance(meta, dict) else {}
        self.class_name = str(meta.get("class_name", "?"))
        self.version = meta.get("version")
        state = meta.get("state")
        self.state = dict(state) if isinstance(state, dict) else {}
        # meta["module_src"] is deliberately dropped: it is the code the unsafe loader would exec.

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


class _EasyDict(dict):
    """Plain dict standing in for ``dnnlib.util.EasyDict`` (attribute access is not needed)."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a torch storage")
    return torch._utils._rebuild_tensor_v2(storage, int(storage_offset), tuple(size), tuple(stride), False, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    return data


def _load_storage_bytes(b: bytes):
    # Each storage was saved with torch.save (legacy format) inside the pickle; weights_only=True
    # restricts that inner pickle to tensors/storages too.
    return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


def _np_scalar(dtype, data=None):
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("object-dtype numpy scalars are not allowed")
    if isinstance(data, (bytes, bytearray)):
        return np.frombuffer(bytes(data), dtype=dt, count=1)[0]
    return dt.type(0)


def _np_dtype(*args):
    dt = np.dtype(*args[:1]) if args else np.dtype("f8")
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtype is not allowed")
    return dt


class _NpArrayRecon(_Inert):
    """numpy ``_reconstruct`` + BUILD: materialise only plain-bytes, non-object arrays."""

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def to_numpy(self) -> Optional[np.ndarray]:
        st = self._state
        if isinstance(st, tuple) and len(st) == 5 and isinstance(st[4], (bytes, bytearray)) and isinstance(st[2], np.dtype):
            _, shape, dt, fortran, raw = st
            if dt.hasobject:
                return None
            return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C").copy()
        return None


def _torch_dtype(name: str):
    v = getattr(torch, name, None)
    return v if isinstance(v, torch.dtype) else _inert_class("torch", name)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NpArrayRecon,
    ("numpy._core.multiarray", "_reconstruct"): _NpArrayRecon,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("torch", "device"): torch.device,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose globals are an allow-list of data constructors; the rest are inert."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and not name.startswith("_"):
            return _torch_dtype(name)
        return _inert_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by PanoHead pickles")


# ------------------------------------------------------------------------------ tree -> tensors
def _to_plain(x: Any) -> Any:
    """Init/rendering kwargs to JSON-able Python values."""
    if isinstance(x, dict):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    return repr(x)


def _module_state(rec: Any) -> dict:
    if isinstance(rec, PersistentRecord):
        return rec.state
    if isinstance(rec, _Inert) and isinstance(rec._state, dict):
        return rec._state
    return {}


def collect_state_dict(rec: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a pickled module tree into ``nn.Module.state_dict`` names (params, persistent buffers)."""
    st = _module_state(rec)
    out: dict[str, torch.Tensor] = {}
    non_persistent = st.get("_non_persistent_buffers_set") or set()
    for key in ("_parameters", "_buffers"):
        for name, t in (st.get(key) or {}).items():
            if t is None or (key == "_buffers" and name in non_persistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{prefix}{name} is not a tensor in the pickle ({type(t).__name__})")
            out[prefix + name] = t.detach().clone().contiguous()
    for name, sub in (st.get("_modules") or {}).items():
        if sub is not None:
            out.update(collect_state_dict(sub, prefix + name + "."))
    return out


def _missing(path: str) -> str:
    """The model table's message for an absent PanoHead file (same text as every other loader)."""
    return missing_model_message(os.path.basename(path), "idsculpt", [os.path.dirname(path) or "."], key="panohead")


def read_release_pickle(path: str, network: str = "G_ema") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state_dict) of one network of a PanoHead/EG3D training pickle, without running its code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing(path))
    name = os.path.basename(path)
    fmt = file_format(path)
    if fmt in ("safetensors", "torch-zip", "torch-legacy"):
        # a weights file of some model under a .pkl name: read it safely and say what it is
        sd = read_state_dict(path, "panohead")
        raise wrong_model_error(path, sd, "panohead", "a bare weights file, not the release pickle with its network "
                                "configuration" if fmt != "safetensors" else "a safetensors file without its .json config")
    if fmt != "pickle":
        check_weight_file(path, "panohead")  # raises the corrupt-or-truncated message
    with open(path, "rb") as f:
        try:
            data = SafeUnpickler(f).load()
        except Exception as e:  # damaged bytes can surface as any exception type while unpickling
            with open(path, "rb") as g:
                _, problem = scan_pickle(g)
            if problem:
                raise corrupt_error(path, problem, "panohead") from None
            raise corrupt_error(path, f"its pickle cannot be read ({type(e).__name__}: {e})", "panohead") from None
    if not isinstance(data, dict) or network not in data:
        keys = list(data)[:8] if isinstance(data, dict) else type(data).__name__
        weights = flatten_tensors(data) if isinstance(data, dict) else {}
        if weights:
            raise wrong_model_error(path, weights, "panohead", f"no '{network}' network")
        raise ModelFileError(f"{name} has no '{network}' network (found {keys}): not a PanoHead training pickle. "
                             f"Expected {expected_text('panohead')}.", "wrong", path)
    rec = data[network]
    if not isinstance(rec, PersistentRecord):
        raise ModelFileError(f"'{network}' in {name} is not a torch_utils.persistence object: not a PanoHead training "
                             f"pickle. Expected {expected_text('panohead')}.", "wrong", path)
    if rec.class_name != "TriPlaneGenerator":
        raise ModelFileError(f"'{network}' in {name} is a {rec.class_name}, not PanoHead's TriPlaneGenerator. "
                             f"Expected {expected_text('panohead')}.", "wrong", path)
    st = rec.state
    init_args = list(st.get("_init_args") or ())
    init_kwargs = _to_plain(dict(st.get("_init_kwargs") or {}))
    names = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"]
    for n, v in zip(names, init_args):  # positional args -> named
        init_kwargs.setdefault(n, _to_plain(v))
    config = {
        "format": "idsculpt-panohead",
        "format_version": FORMAT_VERSION,
        "class_name": rec.class_name,
        "init_kwargs": init_kwargs,
        # the live attributes win over init kwargs: scripts edit them after construction
        "rendering_kwargs": _to_plain(dict(st.get("rendering_kwargs") or init_kwargs.get("rendering_kwargs") or {})),
        "neural_rendering_resolution": int(_to_plain(st.get("neural_rendering_resolution", 64)) or 64),
    }
    return config, collect_state_dict(rec)


def converted_paths(pkl_path: str, out_dir: Optional[str] = None) -> tuple[str, str]:
    base = os.path.splitext(os.path.basename(pkl_path))[0]
    d = out_dir or os.path.dirname(os.path.abspath(pkl_path))
    return os.path.join(d, base + ".safetensors"), os.path.join(d, base + ".json")


def _source_stamp(pkl_path: str) -> str:
    """Size and modification time of the pickle: a replaced file under the same name is converted again."""
    st = os.stat(pkl_path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _converted_stamp(st_path: str) -> Optional[str]:
    from safetensors import safe_open

    try:
        with safe_open(st_path, framework="pt") as f:
            return (f.metadata() or {}).get("source_stamp")
    except Exception:  # unreadable/partial file: convert again
        return None


def convert_pickle(pkl_path: str, out_dir: Optional[str] = None, overwrite: bool = False) -> tuple[str, str]:
    """Convert once: pickle -> safetensors + JSON next to it (or in ``out_dir``). Returns the paths."""
    from safetensors.torch import save_file

    st_path, js_path = converted_paths(pkl_path, out_dir)
    converted = os.path.isfile(st_path) and os.path.isfile(js_path)
    if not os.path.isfile(pkl_path):
        if converted and not overwrite:  # the pickle may be deleted once converted
            return st_path, js_path
        read_release_pickle(pkl_path)  # raises the missing-model message
    stamp = _source_stamp(pkl_path)
    if not overwrite and converted and _converted_stamp(st_path) == stamp:
        return st_path, js_path
    config, sd = read_release_pickle(pkl_path)
    # check it builds and every key matches before writing anything
    check_state_dict(build_from_config(config), sd, os.path.basename(pkl_path))
    try:
        os.makedirs(os.path.dirname(st_path), exist_ok=True)
        with open(js_path + ".tmp", "w") as f:
            json.dump(config, f, indent=1)
    except OSError as e:
        raise PermissionError(f"cannot write the converted PanoHead files in {os.path.dirname(st_path)} ({e}); make the "
                              "folder writable or convert elsewhere with core.panohead.convert_pickle(pkl, out_dir)") from e
    save_file(sd, st_path + ".tmp", metadata={"format": "idsculpt-panohead", "source": os.path.basename(pkl_path),
                                               "source_stamp": stamp})
    os.replace(st_path + ".tmp", st_path)
    os.replace(js_path + ".tmp", js_path)
    return st_path, js_path


def check_state_dict(g: TriPlaneGenerator, sd: dict[str, torch.Tensor], name: str) -> None:
    """Load ``sd`` strictly, turning a mismatch into one readable message."""
    own = g.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or extra or shapes:
        if not set(sd) & set(own):  # no PanoHead key at all: another model; say which
            raise wrong_model_error(name, sd, "panohead", "none of its keys is a TriPlaneGenerator weight")
        raise ValueError(f"{name} does not match PanoHead's TriPlaneGenerator: missing {missing[:5]}, unexpected {extra[:5]}, "
                         f"shape mismatch {shapes[:5]} (is it a different PanoHead/EG3D variant?)")
    g.load_state_dict(sd, strict=True)


def build_from_config(config: dict[str, Any]) -> TriPlaneGenerator:
    if config.get("class_name", "TriPlaneGenerator") != "TriPlaneGenerator":
        raise ValueError(f"config describes a {config.get('class_name')}, expected TriPlaneGenerator")
    kwargs = dict(config["init_kwargs"])
    if config.get("rendering_kwargs"):
        kwargs["rendering_kwargs"] = dict(config["rendering_kwargs"])
    g = TriPlaneGenerator(**kwargs)
    g.neural_rendering_resolution = int(config.get("neural_rendering_resolution", 64))
    return g


def load_generator(path: str, device: str | torch.device = "cpu", convert_dir: Optional[str] = None) -> TriPlaneGenerator:
    """Load a PanoHead generator from the release ``.pkl`` (converted on first use) or a converted
    ``.safetensors`` (with its ``.json`` beside it). Returns it in eval mode, gradients off."""
    if path.endswith(".pkl"):
        path, js = convert_pickle(path, convert_dir)
    elif path.endswith(".safetensors"):
        js = os.path.splitext(path)[0] + ".json"
    else:
        raise ValueError(f"expected a PanoHead .pkl or converted .safetensors, got {os.path.basename(path)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing(path))
    if not os.path.isfile(js):
        raise FileNotFoundError(f"{os.path.basename(path)} needs its config {os.path.basename(js)} beside it (written by the conversion)")
    with open(js) as f:
        config = json.load(f)
    g = build_from_config(config)
    check_state_dict(g, read_state_dict(path, "panohead"), os.path.basename(path))
    return g.eval().requires_grad_(False).to(device)


def save_converted(generator: TriPlaneGenerator, config: dict[str, Any], st_path: str) -> tuple[str, str]:
    """Write a generator in the converted format (used for tests and after PTI)."""
    from safetensors.torch import save_file

    js = os.path.splitext(st_path)[0] + ".json"
    save_file({k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}, st_path)
    with open(js, "w") as f:
        json.dump(config, f, indent=1)
    return st_path, js
