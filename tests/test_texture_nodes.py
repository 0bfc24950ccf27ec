"""Texture nodes inside a real ComfyUI (in-process, CPU) with tiny random-weight SD1.5-shaped models.

Progressive Inpaint and Texture Refine run through ComfyUI's node execution (run_node: the class
clone with hidden inputs, under torch.inference_mode) on comfy.sample.sample, a ControlNet and a VAE.
Skipped when no ComfyUI is importable: run with
``COMFYUI_PATH=/work/ComfyUI /work/comfyvenv/bin/python -m pytest -q tests/test_texture_nodes.py``.
"""
from __future__ import annotations

import types

import pytest
import torch
import trimesh

from idsculpt.core.camera import Cameras
from idsculpt.core.mesh import HeadMesh

pytestmark = pytest.mark.comfy

RES = 64  # view crops (latents 8×8)


@pytest.fixture(scope="module")
def env(comfy_inprocess):
    from tiny_models import tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae

    nodes = comfy_inprocess.load_pack_nodes()
    s = trimesh.creation.icosphere(2)
    head = HeadMesh(torch.tensor(s.vertices, dtype=torch.float32) * 0.9, torch.tensor(s.faces))
    y, x = torch.meshgrid(torch.linspace(0, 1, RES), torch.linspace(0, 1, RES), indexing="ij")
    portrait = torch.stack([x, y, 1 - x], -1)[None]  # IMAGE [1,H,W,3]
    return types.SimpleNamespace(
        ci=comfy_inprocess, nodes=nodes, head=head, portrait=portrait, camera=Cameras.orbit(0.0, 0.0, 2.7, 30.0, RES),
        model=tiny_sd15_model(), controlnet=tiny_controlnet(), vae=tiny_vae(), pos=tiny_conditioning(3), neg=tiny_conditioning(4),
    )


def _sampler(**kw):
    base = dict(seed=0, steps=2, cfg=3.0, sampler_name="ddim", scheduler="ddim_uniform")
    base.update(kw)
    return base


def test_nodes_registered(env):
    for nid in ("IDSculptProgressiveInpaint", "IDSculptTextureRefine"):
        schema = env.nodes[nid].GET_SCHEMA()
        assert all(getattr(i, "tooltip", None) for i in schema.inputs), nid


def test_progressive_inpaint_then_refine_change_the_texture(env):
    inpaint = env.ci.run_node(
        env.nodes["IDSculptProgressiveInpaint"], head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
        control_net=env.controlnet, reference_image=env.portrait, reference_camera=env.camera, reference_mask=None,
        denoise=0.95, control_strength=1.0, texture_size="512", max_faces=100000, view_plan="-15, 90; -15, -90; 0, 180",
        resolution=RES, erode_iterations=8, cos_threshold=0.0, policy="first", **_sampler(),
    )
    head, texture, views = inpaint.args
    assert isinstance(head, HeadMesh) and head.has_uv and head.texture.shape == (512, 512, 3)
    assert texture.shape == (1, 512, 512, 3) and bool(torch.isfinite(texture).all())
    assert views.shape[1:] == (RES, RES, 3) and views.shape[0] >= 3  # the portrait + generated views as previews
    assert float(texture.std()) > 0.02  # no longer the uniform grey it started as
    # the portrait is in the texture: rendering the reference view gives it back near the centre
    from idsculpt.core.texture import render_textured

    out, _ = render_textured(head, head.texture, env.camera)
    c = slice(RES // 2 - 6, RES // 2 + 6)
    assert (out.color[0, c, c] - env.portrait[0, c, c]).abs().mean() < 0.05

    refined = env.ci.run_node(
        env.nodes["IDSculptTextureRefine"], head=head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
        control_net=env.controlnet, reference_image=env.portrait, reference_camera=env.camera, face_mask=None,
        refine_steps=3, t_min=50, t_max=200, learning_rate=0.05, control_strength=1.0, resolution=RES, perceptual_model="none",
        **_sampler(),
    )
    head2, texture2 = refined.args
    assert torch.equal(head2.uvs, head.uvs) and torch.equal(head2.faces, head.faces)
    assert bool(torch.isfinite(texture2).all()) and texture2.min() >= 0 and texture2.max() <= 1
    assert (texture2 - texture).abs().max() > 1e-3


def test_inpainter_blends_latents_and_uses_the_normal_hint(env):
    from idsculpt.nodes.texture_nodes import ComfyInpainter, ComfySampling

    g = torch.Generator().manual_seed(0)
    image = torch.rand(RES, RES, 3, generator=g)
    mask = torch.zeros(RES, RES)
    mask[:, RES // 2:] = 1  # generate the right half, keep the left half
    hint_a = torch.rand(RES, RES, 3, generator=g)
    hint_b = torch.rand(RES, RES, 3, generator=g)
    with torch.inference_mode():
        roundtrip = env.vae.decode(env.vae.encode(image[None]))[0]
        s = ComfySampling(env.model, env.pos, env.neg, env.vae, env.controlnet, 1.0, steps=2, cfg=3.0)
        a = ComfyInpainter(s, 1.0).inpaint(image, mask, hint_a, None)
        s.calls = 0
        b = ComfyInpainter(s, 1.0).inpaint(image, mask, hint_b, None)
        s0 = ComfySampling(env.model, env.pos, env.neg, env.vae, env.controlnet, 0.0, steps=2, cfg=3.0)
        c = ComfyInpainter(s0, 1.0).inpaint(image, mask, hint_a, None)
        s0.calls = 0
        d = ComfyInpainter(s0, 1.0).inpaint(image, mask, hint_b, None)
    keep = slice(0, RES // 2 - 16)  # away from the mask edge (the decoder's receptive field)
    gen = slice(RES // 2 + 16, RES)
    # kept latents survive the sampling: the kept half stays the VAE round trip, the generated half does not
    assert (a[:, keep] - roundtrip[:, keep]).abs().mean() < 0.5 * (a[:, gen] - roundtrip[:, gen]).abs().mean()
    assert (a - b).abs().max() > 1e-4  # the ControlNet hint matters...
    assert torch.allclose(c, d)  # ...and is off at strength 0


def test_bad_inputs_give_clear_errors(env):
    with pytest.raises(ValueError, match="reference_camera"):
        env.ci.run_node(
            env.nodes["IDSculptProgressiveInpaint"], head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
            reference_image=env.portrait, denoise=0.95, control_strength=1.0, texture_size="512", max_faces=100000,
            view_plan="0, 0", resolution=RES, erode_iterations=8, cos_threshold=0.0, policy="first", **_sampler(),
        )
    with pytest.raises(ValueError, match="textured head"):
        env.ci.run_node(
            env.nodes["IDSculptTextureRefine"], head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
            refine_steps=2, t_min=50, t_max=200, learning_rate=0.02, control_strength=1.0, resolution=RES, **_sampler(),
        )
