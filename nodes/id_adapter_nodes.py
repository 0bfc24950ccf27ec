"""ID adapter nodes: load an IP-Adapter FaceID file and patch a MODEL's cross-attention with it.

The patch is an ordinary ComfyUI attn2 replacement on every SD1.5 cross-attention block of a
``model.clone()``, so the patched MODEL works in KSampler, in our ISD guidance and in inpainting
alike. It chains whatever attn2 replacement was there before (other packs' patches keep working)
and reads two per-call switches from ``transformer_options`` (set by whoever runs the model):

  ``idsculpt_id_enabled``: bool, False turns the ID branch off for the whole call;
  ``idsculpt_id_mask``:    bool tensor [B] (one per latent in the batch), False = no ID for that view
                           (ISD uses it for views with |azimuth| >= 70 degrees);
  ``idsculpt_id_off_conds``: indices into the conds list of ``calc_cond_batch`` (the values of
                           ComfyUI's ``cond_or_uncond``) whose rows run with no ID at all (ISD's third
                           cond: the positive prompt with ID off, its gradient's estimator).
"""
from __future__ import annotations

import copy
import os

import torch
from comfy_api.latest import io

import comfy.ldm.modules.attention
import comfy.patcher_extension
import folder_paths

from ..core.face.id_adapter import SD15_ATTN2_BLOCKS, IDAdapter, decoupled_cross_attention, load_id_adapter
from .common import model_path
from .types import FACE_ID, ID_ADAPTER
from .validation import known, verdict
from .vram import module_tensors

ID_ENABLED_KEY = "idsculpt_id_enabled"
ID_MASK_KEY = "idsculpt_id_mask"
ID_OFF_CONDS_KEY = "idsculpt_id_off_conds"
IPADAPTER_FOLDER = "ipadapter"
#: key of the ON_CLONE callback that gives every clone its own ID patch objects
ON_CLONE_KEY = "idsculpt_id_patch_owner"


def _ensure_ipadapter_folder() -> None:
    """Register models/ipadapter like IPAdapter_plus does (if that pack is absent)."""
    default = os.path.join(folder_paths.models_dir, IPADAPTER_FOLDER)
    if IPADAPTER_FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[IPADAPTER_FOLDER]
        paths = list(paths) + ([default] if default not in paths else [])
        folder_paths.folder_names_and_paths[IPADAPTER_FOLDER] = (paths, set(exts) | set(folder_paths.supported_pt_extensions))
    else:
        folder_paths.folder_names_and_paths[IPADAPTER_FOLDER] = ([default], set(folder_paths.supported_pt_extensions))


_ensure_ipadapter_folder()


class IDAttentionPatch:
    """attn2 replacement: the previous attention (or ComfyUI's) + weight * attention to the ID tokens.

    Rows of the batch are laid out as ComfyUI batches them: ``len(cond_or_uncond)`` chunks of the
    latent batch, chunk j positive when cond_or_uncond[j] == 0. Positive rows attend to the subject's
    ID tokens; negative rows attend to the zero-embedding tokens (``uncond="zero_id"``, as IP-Adapter
    is trained and run, and as ID-Sculpt runs it) or get no ID branch at all (``uncond="none"``).
    Chunks whose cond index is listed in ``transformer_options[ID_OFF_CONDS_KEY]`` get no ID branch.
    """

    def __init__(self, adapter: IDAdapter, key: str, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                 weight: float, sigma_start: float, sigma_end: float, uncond: str = "zero_id", previous=None):
        self.adapter, self.key = adapter, key
        self.cond_tokens, self.uncond_tokens = cond_tokens, uncond_tokens
        self.weight, self.sigma_start, self.sigma_end = float(weight), float(sigma_start), float(sigma_end)
        self.uncond = uncond
        self.previous = previous
        self.extra_callbacks: list = []  # IPAdapter_plus-style ``add()`` on an existing key
        self._kv_cache: dict = {}

    # IPAdapter_plus calls ``.add(callback, **kwargs)`` on whatever object sits at a block key.
    def add(self, callback, **kwargs) -> None:
        self.extra_callbacks.append((callback, kwargs))

    # -- clones ----------------------------------------------------------------------------------
    # The mutable state is ``extra_callbacks`` (other packs' in-place ``add``) and our own patches
    # down the ``previous`` chain; the adapter, the ID tokens and the K/V cache (a pure function of
    # them) are never written after construction and are shared by every copy.
    def fresh_copy(self) -> "IDAttentionPatch":
        """A copy for a MODEL clone: its own callbacks list (same callbacks) and own chained ID patches."""
        n = copy.copy(self)
        n.extra_callbacks = list(self.extra_callbacks)
        if isinstance(self.previous, IDAttentionPatch):
            n.previous = self.previous.fresh_copy()
        return n

    def __deepcopy__(self, memo: dict) -> "IDAttentionPatch":
        # ComfyUI 0.3.x clones deep-copy model_options: keep that for the foreign parts (callbacks,
        # a chained patch of another pack) but share the adapter weights instead of copying them.
        n = copy.copy(self)
        memo[id(self)] = n
        n.extra_callbacks = copy.deepcopy(self.extra_callbacks, memo)
        n.previous = copy.deepcopy(self.previous, memo)
        return n

    def _kv(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        ck = (device, dtype)
        if ck not in self._kv_cache:
            with torch.no_grad():
                layer = self.adapter.layers[self.key]
                wk = layer.to_k_ip.weight.to(device=device, dtype=torch.float32)
                wv = layer.to_v_ip.weight.to(device=device, dtype=torch.float32)
                toks = torch.cat([self.cond_tokens, self.uncond_tokens]).to(device=device, dtype=torch.float32)
                k, v = toks @ wk.T, toks @ wv.T
                n = self.cond_tokens.shape[0]
                self._kv_cache[ck] = (k[:n].to(dtype), v[:n].to(dtype), k[n:].to(dtype), v[n:].to(dtype))
        return self._kv_cache[ck]

    def row_weights(self, extra_options: dict, rows: int, device: torch.device) -> torch.Tensor:
        """ID weight per batch row [rows] from the branch, the sigma range and the per-call switches."""
        cou = list(extra_options.get("cond_or_uncond", [0]))
        per = max(rows // max(len(cou), 1), 1)
        w = torch.full((len(cou), per), self.weight, device=device)
        off = extra_options.get(ID_OFF_CONDS_KEY, ())
        for j, kind in enumerate(cou):
            if (kind != 0 and self.uncond == "none") or kind in off:
                w[j] = 0.0
        sig = extra_options.get("sigmas", None)
        if sig is not None:
            sig = torch.as_tensor(sig).detach().reshape(-1).to(device=device, dtype=torch.float32, non_blocking=True)
            sig = sig if sig.numel() == per else sig[:1].expand(per)
            active = (sig <= self.sigma_start * (1 + 1e-5)) & (sig >= self.sigma_end * (1 - 1e-5))
            w = w * active.to(w.dtype)[None]
        if not extra_options.get(ID_ENABLED_KEY, True):
            w.zero_()
        mask = extra_options.get(ID_MASK_KEY, None)
        if mask is not None:
            m = torch.as_tensor(mask).reshape(-1).to(device=device, dtype=w.dtype, non_blocking=True)
            if m.numel() == per:
                w = w * m[None]
        return w.reshape(-1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            # transformer_options: ComfyUI's attention wrapper applies the user's attention override
            # (sage, flash, ... via "optimized_attention_override") only when it is passed
            out = comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                                                  transformer_options=extra_options)
        for callback, kwargs in self.extra_callbacks:  # IPAdapter_plus Attn2Replace semantics
            sig = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else 1e9
            if kwargs.get("sigma_end", 0.0) <= sig <= kwargs.get("sigma_start", 1e9):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        if self.weight == 0.0 or not extra_options.get(ID_ENABLED_KEY, True):
            return out
        # No data-dependent early exit below: a GPU->CPU sync per layer would stall the launch queue.
        w = self.row_weights(extra_options, q.shape[0], q.device)
        kc, vc, ku, vu = self._kv(q.device, q.dtype)
        cou = list(extra_options.get("cond_or_uncond", [0]))
        per = q.shape[0] // max(len(cou), 1)
        k_rows = torch.cat([(kc if kind == 0 else ku).expand(per, -1, -1) for kind in cou])
        v_rows = torch.cat([(vc if kind == 0 else vu).expand(per, -1, -1) for kind in cou])
        return decoupled_cross_attention(q, out.to(q.dtype), k_rows, v_rows, heads, w).to(out.dtype)


def apply_id_adapter(model, adapter: IDAdapter, id_embedding: torch.Tensor, weight: float = 1.0,
                     start_percent: float = 0.0, end_percent: float = 1.0, uncond: str = "zero_id"):
    """A clone of ``model`` (ModelPatcher) with the ID adapter on all SD1.5 cross-attention blocks."""
    if uncond not in ("zero_id", "none"):
        raise ValueError(f"uncond must be 'zero_id' or 'none', got {uncond!r}")
    dm = getattr(model.model, "diffusion_model", None)
    ctx = getattr(dm, "context_dim", None)
    info = adapter.info
    if ctx is None:
        # fall back to the first cross-attention's key projection width
        for mod in dm.modules() if dm is not None else []:
            if hasattr(mod, "attn2") and mod.attn2 is not None:
                ctx = mod.attn2.to_k.weight.shape[1]
                break
    if ctx is not None and int(ctx) != info.cross_attention_dim:
        raise ValueError(
            f"ID adapter context width {info.cross_attention_dim} does not match the model's {ctx}: "
            f"use the SD1.5 FaceID file with an SD1.5 model (SDXL files have 2048)."
        )
    missing = [k for _, k in SD15_ATTN2_BLOCKS if k not in adapter.layers]
    if missing:
        raise ValueError(f"ID adapter lacks layers {missing} of SD1.5's 16 cross-attention layers (is it an SDXL file?)")
    ms = model.get_model_object("model_sampling")
    sigma_start, sigma_end = float(ms.percent_to_sigma(start_percent)), float(ms.percent_to_sigma(end_percent))
    with torch.inference_mode(False), torch.no_grad():
        emb = torch.as_tensor(id_embedding).detach().clone().float()
        emb = emb.reshape(1, -1) if emb.dim() < 2 else emb.reshape(emb.shape[0], -1)  # [N,512]: N photos of one person
        if emb.shape[1] != info.id_embedding_dim:
            raise ValueError(f"face ID embedding has {emb.shape[1]} values, the adapter expects {info.id_embedding_dim} (ArcFace)")
        if not torch.isfinite(emb).all():
            raise ValueError("face ID embedding contains NaN/inf")
        # one photo: [1,T,C]; N photos: N*T concatenated tokens (Portrait) or the mean's T (plain FaceID)
        cond_tokens, uncond_tokens = (t.float().cpu() for t in adapter.photo_tokens(emb))

    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for (block_name, number), key in SD15_ATTN2_BLOCKS:
        _check_layer_width(dm, block_name, number, adapter, key)
        three = (block_name, number, 0)
        if three in existing:  # ComfyUI looks up (name, id, index) before (name, id)
            prev, idx = existing[three], 0
        else:
            prev, idx = existing.get((block_name, number)), None
        patch = IDAttentionPatch(adapter, key, cond_tokens, uncond_tokens, weight, sigma_start, sigma_end, uncond, prev)
        m.set_model_attn2_replace(patch, block_name, number, idx)
    own_id_patches_on_clone(m)
    return m


def own_id_patches_on_clone(model) -> None:
    """Make every later ``clone()`` of ``model`` own its ID patch objects.

    ComfyUI 0.3.x deep-copied ``model_options`` on clone; newer releases copy only its dicts and lists
    (``comfy.utils.deepcopy_list_dict``) and share the patch objects, so IPAdapter_plus's in-place
    ``add()`` on a clone would reach the parent and every sibling branch, and pile up one callback per
    queue. An ON_CLONE callback (both versions have it, and clones inherit it) swaps in fresh copies."""
    add = getattr(model, "add_callback_with_key", None)
    if not callable(add):
        return
    remove = getattr(model, "remove_callbacks_with_key", None)
    if callable(remove):  # a second Apply ID Adapter on this MODEL: one callback is enough
        remove(comfy.patcher_extension.CallbacksMP.ON_CLONE, ON_CLONE_KEY)
    add(comfy.patcher_extension.CallbacksMP.ON_CLONE, ON_CLONE_KEY, _copy_id_patches)


def _copy_id_patches(parent, clone) -> None:
    """ON_CLONE callback: replace the clone's ID patches (and the dicts on the way) with its own copies."""
    to = clone.model_options.get("transformer_options", {})
    attn2 = to.get("patches_replace", {}).get("attn2", {})
    if not any(isinstance(p, IDAttentionPatch) for p in attn2.values()):
        return
    copies: dict[int, IDAttentionPatch] = {}
    attn2 = {k: (copies.setdefault(id(p), p.fresh_copy()) if isinstance(p, IDAttentionPatch) else p) for k, p in attn2.items()}
    to = dict(to)
    to["patches_replace"] = {**to["patches_replace"], "attn2": attn2}
    clone.model_options["transformer_options"] = to


def _check_layer_width(dm, block_name: str, number: int, adapter: IDAdapter, key: str) -> None:
    if dm is None:
        return
    blocks = {"input": getattr(dm, "input_blocks", None), "output": getattr(dm, "output_blocks", None)}
    try:
        block = dm.middle_block if block_name == "middle" else blocks[block_name][number]
    except (IndexError, TypeError, KeyError):
        raise ValueError(f"the model has no {block_name} block {number}: not an SD1.5-shaped UNet") from None
    for mod in block.modules():
        if getattr(mod, "attn2", None) is not None:
            width = mod.attn2.to_q.weight.shape[0]
            want = adapter.layers[key].to_k_ip.weight.shape[0]
            if width != want:
                raise ValueError(f"ID adapter layer {key} has width {want}, the model's {block_name} block {number} has {width}: "
                                 "adapter and model do not belong together (SD1.5 adapter needed)")
            return
    raise ValueError(f"the model's {block_name} block {number} has no cross-attention: not an SD1.5-shaped UNet")


def face_embedding(face_id) -> torch.Tensor:
    """The ArcFace embedding(s) of a FACE_ID value: [N,512] for ID Embed's N kept photos of one person
    (core.face.detect.FaceID.all_embeddings), [512] for a one-photo FaceID or a bare tensor."""
    all_embeddings = getattr(face_id, "all_embeddings", None)
    emb = all_embeddings() if callable(all_embeddings) else getattr(face_id, "embedding", face_id)
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"expected a FACE_ID (with an 'embedding' tensor), got {type(face_id).__name__}")
    return emb


class LoadedIDAdapter(IDAdapter):
    """The IDAdapter as the loader hands it on: the same module, telling ComfyUI's RAM-pressure cache
    (newer releases) its weights through ``_comfy_cache_tensors()``. Without it the cache sees an
    object of unknown size, counted as almost nothing when it picks what to evict."""

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        return module_tensors(self)


def as_loaded_adapter(adapter: IDAdapter) -> IDAdapter:
    """``adapter`` with the host cache hook (same object and weights; core.face.id_adapter stays
    free of host hooks, so the class is swapped here, where the node hands it to ComfyUI)."""
    if type(adapter) is IDAdapter:
        adapter.__class__ = LoadedIDAdapter
    return adapter


def percent_range_problem(start_percent: float, end_percent: float) -> str | None:
    """The ID adapter acts from ``start_percent`` to ``end_percent`` of sampling: a start after the end is refused."""
    if start_percent > end_percent:
        return (f"start_percent ({start_percent}) is after end_percent ({end_percent}): the ID adapter would never act; "
                "start must not be after end (0 and 1: every step)")
    return None


class IDAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptIDAdapterLoader",
            display_name="IDSculpt ID Adapter Loader",
            category="IDSculpt/loaders",
            description="Load an IP-Adapter FaceID file (Portrait v11 recommended) from models/ipadapter.",
            inputs=[
                io.Combo.Input("adapter_name", options=folder_paths.get_filename_list(IPADAPTER_FOLDER),
                               tooltip="IP-Adapter FaceID file in models/ipadapter: ip-adapter-faceid-portrait-v11_sd15.bin "
                                       "(what ID-Sculpt uses) or ip-adapter-faceid_sd15.bin (also apply its LoRA)."),
            ],
            outputs=[ID_ADAPTER.Output(display_name="id_adapter")],
        )

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = model_path(IPADAPTER_FOLDER, adapter_name, key="id_adapter")
        with torch.inference_mode(False):
            adapter = load_id_adapter(path)
        return io.NodeOutput(as_loaded_adapter(adapter))


class ApplyIDAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptApplyIDAdapter",
            display_name="IDSculpt Apply ID Adapter",
            category="IDSculpt/guidance",
            description="Patch a MODEL's cross-attention with the subject's ID tokens (works in KSampler and ISD).",
            inputs=[
                io.Model.Input("model", tooltip="SD1.5 MODEL to patch (a clone is patched; LoRAs and other patches stay)."),
                ID_ADAPTER.Input("id_adapter", tooltip="From IDSculpt ID Adapter Loader."),
                FACE_ID.Input("face_id", tooltip="The subject's identity (ArcFace embedding) from IDSculpt ID Embed. Several "
                              "photos: FaceID Portrait gets 16 ID tokens per photo, concatenated; plain FaceID their mean."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.05,
                               tooltip="ID strength (ID-Sculpt: 1.0 for sculpting and texturing, 0.5 / 0.1 for reference normal / depth)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which ID starts acting (0 = from the first, noisiest step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which ID stops acting (1 = until the end)."),
                io.Combo.Input("negative_branch", options=["zero_id", "none"], default="zero_id", optional=True,
                               tooltip="ID tokens on the negative (CFG) branch: 'zero_id' = tokens of an empty identity, as "
                                       "IP-Adapter is trained and ID-Sculpt runs it; 'none' = negative branch untouched."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, start_percent=None, end_percent=None) -> bool | str:
        return verdict(cls, {"start_percent": start_percent, "end_percent": end_percent},
                       percent_range_problem(start_percent, end_percent) if known(start_percent) and known(end_percent) else None)

    @classmethod
    def execute(cls, model, id_adapter, face_id, weight: float, start_percent: float, end_percent: float,
                negative_branch: str = "zero_id") -> io.NodeOutput:
        problem = percent_range_problem(start_percent, end_percent)
        if problem:  # also when called outside a queued prompt (validate_inputs runs only there)
            raise ValueError(problem)
        return io.NodeOutput(apply_id_adapter(model, id_adapter, face_embedding(face_id), weight, start_percent,
                                              end_percent, negative_branch))


NODES = [IDAdapterLoader, ApplyIDAdapter]
