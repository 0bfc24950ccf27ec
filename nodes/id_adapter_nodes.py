"""ID adapter nodes: load an IP-Adapter FaceID file and patch a MODEL's cross-attention with it (the patch and
its per-call switches: nodes/engines/id_patch.py)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

import folder_paths

from ..core.face.id_adapter import IDAdapter, load_id_adapter
from .common import model_folder, model_path
from .engines.id_patch import apply_id_adapter
from .engines.vram import module_tensors
from .types import FACE_ID, ID_ADAPTER
from .validation import known, verdict

IPADAPTER_FOLDER = "ipadapter"


# Register models/ipadapter as IPAdapter_plus does (if that pack is absent): its folder, any extension torch loads.
model_folder(IPADAPTER_FOLDER, set(folder_paths.supported_pt_extensions))


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
