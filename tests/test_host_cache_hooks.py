"""The pack's heavy outputs answer newer ComfyUI's cache and model-tracking hooks (review F6).

Newer ComfyUI sizes cached outputs for its RAM-pressure cache (the default cache) from tensors and an
optional ``_comfy_cache_tensors()`` hook, and marks the dynamically loaded models of an output's
``get_models()`` as in use by the running prompt. ComfyUI 0.3.64 has neither, so the host side is the
stand-in in tests/host_cache_standin.py, which walks outputs as upstream does.
"""
from __future__ import annotations

import types

import pytest
import torch

from host_cache_standin import FIRST_TO_GO, RAM_CACHE_DEFAULT_RAM_USAGE, PromptModelTracker, ram_usage, storage_bytes

RES = 64

# VGG16's 13 conv layers: sum of 3*3*cin*cout + cout (the torchvision features stack)
VGG16_CONV_PARAMS = 14_714_688
LPIPS_CHANNELS = 64 + 128 + 256 + 512 + 512


def test_perceptual_net_reports_its_weights() -> None:
    """Known size: VGG16 features + LPIPS channel weights + the two 3-vectors of input scaling, fp32."""
    from idsculpt.core.panohead.perceptual import VGG16Perceptual

    net = VGG16Perceptual()
    usage, oom = ram_usage([net])
    assert usage - RAM_CACHE_DEFAULT_RAM_USAGE == 4 * (VGG16_CONV_PARAMS + LPIPS_CHANNELS + 3 + 3)
    assert oom == usage
    # a plain object without the hook is (almost) nothing to the cache: what the hook fixes
    assert ram_usage([types.SimpleNamespace(net=net)])[0] == RAM_CACHE_DEFAULT_RAM_USAGE


@pytest.mark.comfy
def test_module_tensors_and_unique_models(comfy_inprocess) -> None:
    from idsculpt.nodes.engines.vram import module_tensors, unique_models

    a = torch.nn.Linear(3, 2)
    b = torch.nn.BatchNorm1d(4)
    t = module_tensors(a, None, b, a)
    assert [x.shape for x in t] == [(2, 3), (2,), (4,), (4,), (4,), (4,), ()]  # weights, then BN's running stats
    m1, m2 = object(), object()
    assert unique_models([m1, None, m2, m1]) == [m1, m2]


@pytest.mark.comfy
def test_id_adapter_loader_output_reports_weights(comfy_inprocess, tmp_path) -> None:
    """The loader hands on the same module (class with the hook swapped in); its size is its weights."""
    from idsculpt.core.face.id_adapter import IDAdapter, load_id_adapter
    from idsculpt.nodes.id_adapter_nodes import LoadedIDAdapter, as_loaded_adapter
    from tiny_models import write_tiny_faceid_adapter

    ad = load_id_adapter(write_tiny_faceid_adapter(str(tmp_path / "faceid.bin")))
    emb = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    before = ad.id_tokens(emb)
    keys = list(ad.state_dict())
    assert ram_usage([ad])[0] == RAM_CACHE_DEFAULT_RAM_USAGE  # core's class: unknown to the cache
    out = as_loaded_adapter(ad)
    assert out is ad and type(ad) is LoadedIDAdapter and isinstance(ad, IDAdapter)
    assert list(ad.state_dict()) == keys and torch.equal(ad.id_tokens(emb), before)
    n = sum(p.numel() for p in ad.parameters())
    assert ram_usage([ad])[0] - RAM_CACHE_DEFAULT_RAM_USAGE == 4 * n
    # the node itself returns it
    ci = comfy_inprocess
    folder = ci.sandbox.model_dir("ipadapter")
    write_tiny_faceid_adapter(f"{folder}/ip-adapter-faceid-portrait-v11_hooktest.safetensors")
    got = ci.run_node(ci.load_pack_nodes()["IDSculptIDAdapterLoader"],
                      adapter_name="ip-adapter-faceid-portrait-v11_hooktest.safetensors").result[0]
    assert type(got) is LoadedIDAdapter


@pytest.mark.comfy
def test_isd_guidance_models_tracked_and_sized(comfy_inprocess) -> None:
    """ISD_GUIDANCE: its dynamic models are pinned in use for the prompt and released at its end; the
    cache sizes it by its own tensors and, once a later prompt no longer uses it, evicts it first."""
    import comfy.model_patcher

    from idsculpt.nodes.engines.isd_guidance import ComfyISDGuidance, build_isd_guidance
    from idsculpt.nodes.engines.vram import module_tensors
    from tiny_models import tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae

    class TrackedDynamic(comfy.model_patcher.ModelPatcher):
        """A dynamically loaded patcher (newer ComfyUI) that records the tracker's in-use mark."""
        in_use = False

        def is_dynamic(self) -> bool:
            return True

        def set_in_use_by_current_prompt(self, value: bool) -> None:
            self.in_use = value

    base, vae, cn = tiny_sd15_model(), tiny_vae(), tiny_controlnet()
    unet = TrackedDynamic(base.model, base.load_device, base.offload_device)
    vae.patcher = TrackedDynamic(vae.first_stage_model, vae.patcher.load_device, vae.patcher.offload_device)
    pos, neg = tiny_conditioning(3), tiny_conditioning(4)
    pos = [[pos[0][0], dict(pos[0][1], control=cn.copy())]]  # a ControlNet the user applied: same weights
    landmarks = types.SimpleNamespace(draw=lambda cams: torch.zeros(len(cams), RES, RES, 3))
    g = build_isd_guidance(unet, pos, neg, vae, cn, landmarks, resolution=RES, seed=0)
    assert isinstance(g, ComfyISDGuidance)
    models = g.get_models()
    assert models == [unet, cn.control_model_wrapped, vae.patcher]  # each once, the chained copy included
    tracker = PromptModelTracker()
    tracker.add([(g,), (pos,)])  # one node's outputs, as the executor hands them
    assert unet.in_use and vae.patcher.in_use and len(tracker.models) == 2  # the ControlNet patcher is static
    tracker.end()
    assert not unet.in_use and not vae.patcher.in_use

    own = [g.predictor.alphas_cumprod, g.sigmas, pos[0][0], neg[0][0]]
    usage, oom = ram_usage([g])
    assert usage - RAM_CACHE_DEFAULT_RAM_USAGE == storage_bytes(own) > 0
    assert oom == usage  # in use by the current prompt: sized, not doomed
    assert ram_usage([g], old_generation=True)[1] == FIRST_TO_GO  # holds models: first to go once unused
    # the private VAE encoder, once built, is part of what the guidance keeps
    with torch.inference_mode(False):
        g.predictor.encode(torch.rand(1, RES, RES, 3))
    grown = ram_usage([g])[0] - usage
    assert grown == storage_bytes(module_tensors(g.predictor._encoder)) > 0


def test_pack_value_types_report_their_tensors_with_exact_sizes() -> None:
    """HeadMesh, Cameras, GanViews and ReferenceGeometry (review F6): the cache sees each storage once, nested
    values (GanViews' cameras) included, and a shared tensor is not counted twice."""
    from idsculpt.core.camera import Cameras
    from idsculpt.core.mesh import HeadMesh
    from idsculpt.core.stage_types import GanViews, ReferenceGeometry

    head = HeadMesh(torch.rand(100, 3), torch.randint(0, 100, (50, 3)), texture=torch.rand(16, 16, 3))
    assert ram_usage([head])[0] - RAM_CACHE_DEFAULT_RAM_USAGE == 100 * 3 * 4 + 50 * 3 * 8 + 16 * 16 * 3 * 4
    cams = Cameras.orbit(0.0, torch.tensor([0.0, 90.0]), 2.7, 20.0, 64)
    cam_bytes = storage_bytes([cams.cam2world, cams.fov])
    assert cam_bytes > 0 and ram_usage([cams])[0] - RAM_CACHE_DEFAULT_RAM_USAGE == cam_bytes
    normals, masks = torch.rand(2, 8, 8, 3), torch.ones(2, 8, 8, 1)
    views = GanViews(cams, normals, masks)
    assert ram_usage([views])[0] - RAM_CACHE_DEFAULT_RAM_USAGE == cam_bytes + 2 * 8 * 8 * 4 * 4
    one = Cameras.orbit(0.0, 0.0, 2.7, 20.0, 8)
    shared = torch.rand(8, 8, 1)
    ref = ReferenceGeometry(image=torch.rand(8, 8, 3), camera=one, normal_view=torch.rand(8, 8, 3), disparity=shared,
                            mask=shared, face_mask=shared, depth_mask=shared, face_region=shared)
    expected = storage_bytes([one.cam2world, one.fov]) + (8 * 8 * 3 + 8 * 8 * 3 + 8 * 8) * 4
    assert ram_usage([ref])[0] - RAM_CACHE_DEFAULT_RAM_USAGE == expected


@pytest.mark.comfy
def test_panohead_model_reports_generator_and_perceptual_weights(comfy_inprocess) -> None:
    """Review F6: the PANOHEAD value holds the whole generator; the cache must see it (and nothing for the template)."""
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from panohead_fixtures import tiny_generator

    from idsculpt.nodes.panohead_nodes import PanoHeadModel
    from idsculpt.nodes.engines.vram import module_tensors

    g, vgg = tiny_generator(seed=1), VGG16Perceptual()
    usage = ram_usage([PanoHeadModel(g, vgg, "n")])[0]
    assert usage - RAM_CACHE_DEFAULT_RAM_USAGE == storage_bytes(module_tensors(g, vgg)) > 0
    assert ram_usage([PanoHeadModel(None, None, "template")])[0] == RAM_CACHE_DEFAULT_RAM_USAGE
