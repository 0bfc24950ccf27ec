"""Texture nodes inside a real ComfyUI (in-process, CPU) with tiny random-weight SD1.5-shaped models.

Progressive Inpaint and Texture Refine run through ComfyUI's node execution (run_node: the class
clone with hidden inputs, under torch.inference_mode) on comfy.sample.sample, a ControlNet and a VAE.
Skipped when no ComfyUI is importable: run with
``COMFYUI_PATH=<ComfyUI> <ComfyUI's python> -m pytest -q tests/test_texture_nodes.py`` (docs/COMFYUI_TESTING.md).
"""
from __future__ import annotations

import types

import pytest
import torch
import trimesh

from idsculpt.core.camera import Cameras
from idsculpt.core.mesh import HeadMesh
from unchanged import assert_unchanged, snapshot

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
    given = snapshot((env.head, env.portrait, env.camera, env.pos, env.neg))
    inpaint = env.ci.run_node(
        env.nodes["IDSculptProgressiveInpaint"], head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
        control_net=env.controlnet, reference_image=env.portrait, reference_camera=env.camera, reference_mask=None,
        denoise=0.95, control_strength=1.0, texture_size="512", max_faces=100000, view_plan="-15, 90; -15, -90; 0, 180",
        resolution=RES, erode_iterations=8, cos_threshold=0.0, policy="first", **_sampler(),
    )
    head, texture, views = inpaint.args
    assert_unchanged(given, (env.head, env.portrait, env.camera, env.pos, env.neg))
    given = snapshot(head)
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
        control_net=env.controlnet, reference_image=env.portrait, reference_camera=env.camera, reference_mask=None,
        refine_steps=3, t_min=50, t_max=200, learning_rate=0.05, control_strength=1.0, resolution=RES, perceptual_model="none",
        **_sampler(),
    )
    head2, texture2 = refined.args
    assert_unchanged(given, head, "Progressive Inpaint's head")
    assert torch.equal(head2.uvs, head.uvs) and torch.equal(head2.faces, head.faces)
    assert bool(torch.isfinite(texture2).all()) and texture2.min() >= 0 and texture2.max() <= 1
    assert (texture2 - texture).abs().max() > 1e-3


def test_inpainter_blends_latents_and_uses_the_normal_hint(env):
    from idsculpt.nodes.engines.sampling import ComfyInpainter, ComfySampling

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


# ------------------------------------------------------------------------------------ view-dependent prompts
DIRECTIONS = ("front", "side", "back", "overhead")


def _rule(azimuth: float, elevation: float) -> str:
    """The authors' texture prompt processor (front_threshold 45, back_threshold 45, overhead 60),
    written out here: side unless front |az| < 45, back |az| > 135, overhead el > 60 (overhead wins)."""
    a = (azimuth + 180.0) % 360.0 - 180.0
    if elevation > 60:
        return "overhead"
    if abs(a) > 135:
        return "back"
    if abs(a) < 45:
        return "front"
    return "side"


@pytest.fixture
def recorder(env, monkeypatch):
    """comfy.sample.sample replaced by a recorder (returns the encoded latent); every Inpainter / Denoiser
    call records the view it was asked for, so each sampling call pairs with its view."""
    import comfy.sample
    from tiny_models import tiny_conditioning

    from idsculpt.nodes.engines import sampling

    conds = {f"{s}_{d}": tiny_conditioning(10 + k) for k, (s, d) in enumerate((s, d) for s in ("positive", "negative") for d in DIRECTIONS)}
    name = {id(c[0][0]): key for key, c in conds.items()}
    name[id(env.pos[0][0])], name[id(env.neg[0][0])] = "positive", "negative"
    rec = types.SimpleNamespace(views=[], pairs=[], conds=conds)

    def fake_sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, **kw):
        rec.pairs.append((name[id(positive[0][0])], name[id(negative[0][0])]))
        return latent_image

    inpaint, denoise = sampling.ComfyInpainter.inpaint, sampling.ComfyDenoiser.denoise

    def rec_inpaint(self, image, generate_mask, normal_control, context):
        rec.views.append((context.view.azimuth, context.view.elevation))
        return inpaint(self, image, generate_mask, normal_control, context)

    def rec_denoise(self, image, normal_control, view, t):
        rec.views.append((view.azimuth, view.elevation))
        return denoise(self, image, normal_control, view, t)

    monkeypatch.setattr(comfy.sample, "sample", fake_sample)
    monkeypatch.setattr(sampling.ComfyInpainter, "inpaint", rec_inpaint)
    monkeypatch.setattr(sampling.ComfyDenoiser, "denoise", rec_denoise)
    return rec


def test_inpaint_views_sample_with_their_directions_prompt_pair(env, recorder):
    expected_views = [(a, -15.0) for a in (-45, 45, 0, -90, 90, 120, -120, 150, -150, 180)] + [(a, 45.0) for a in (0, 90, -90, 135, -135)]
    expected = [_rule(a, e) for a, e in expected_views]
    assert expected.count("back") == 3 and expected.count("front") == 2  # 150, -150, 180; 0 at both elevations
    env.ci.run_node(
        env.nodes["IDSculptProgressiveInpaint"], head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
        control_net=env.controlnet, denoise=0.95, control_strength=1.0, texture_size="256", max_faces=100000, view_plan="default",
        resolution=RES, erode_iterations=8, cos_threshold=0.99, policy="first", **_sampler(), **recorder.conds,
    )  # cos_threshold 0.99 paints almost nothing, so every view has a region to generate and samples
    assert [(float(a), float(e)) for a, e in recorder.views] == [(float(a), e) for a, e in expected_views]
    assert recorder.pairs == [(f"positive_{d}", f"negative_{d}") for d in expected]


def test_refine_random_views_sample_with_their_directions_prompt_pair(env, recorder):
    from idsculpt.core.texture import unwrap_uv

    head, _ = unwrap_uv(env.head, 256)
    env.ci.run_node(
        env.nodes["IDSculptTextureRefine"], head=head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
        control_net=env.controlnet, refine_steps=8, t_min=50, t_max=200, learning_rate=0.02, control_strength=1.0,
        resolution=RES, perceptual_model="none", **_sampler(seed=4), **recorder.conds,
    )
    assert len(recorder.views) == 8 == len(recorder.pairs)  # no reference: every step is a random view
    expected = [_rule(a, e) for a, e in recorder.views]
    assert {"front", "side", "back"} <= set(expected)  # the sampled azimuths cover the directions
    assert recorder.pairs == [(f"positive_{d}", f"negative_{d}") for d in expected]


def test_unconnected_directions_fall_back_to_the_plain_prompts(env, recorder):
    env.ci.run_node(
        env.nodes["IDSculptProgressiveInpaint"], head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae,
        denoise=0.95, control_strength=1.0, texture_size="256", max_faces=100000, view_plan="-15, 180; -15, 0",
        resolution=RES, erode_iterations=8, cos_threshold=0.99, policy="first", **_sampler(),
        negative_back=recorder.conds["negative_back"],
    )
    assert recorder.pairs == [("positive", "negative_back"), ("positive", "negative")]


def test_reference_mask_replaces_face_mask_and_the_head_frame_is_checked(env, caplog):
    schema = env.nodes["IDSculptTextureRefine"].GET_SCHEMA()
    names = [i.id for i in schema.inputs]
    assert "reference_mask" in names and "face_mask" not in names
    assert names.index("reference_image") < names.index("reference_camera") < names.index("reference_mask")
    for nid in ("IDSculptProgressiveInpaint", "IDSculptTextureRefine"):
        ids = [i.id for i in env.nodes[nid].GET_SCHEMA().inputs]
        assert all(f"{s}_{d}" in ids for s in ("positive", "negative") for d in DIRECTIONS), nid
    from idsculpt.nodes.texture_nodes import _check_head_frame

    small = HeadMesh(env.head.vertices * (0.4 / 0.9), env.head.faces)
    with caplog.at_level("WARNING", logger="IDSculpt"):
        assert _check_head_frame(env.head, "Progressive Inpaint") is None
        note = _check_head_frame(small, "Progressive Inpaint")
    assert note and "DMTet Sculpt" in note and any("normalised frame" in r.getMessage() for r in caplog.records)


class _NearestX2:
    """An UPSCALE_MODEL stand-in (spandrel's interface as ComfyUI uses it: ``scale``, ``to``, a call on
    [B,3,h,w]) with a closed form: nearest-neighbour x2."""

    scale = 2

    def to(self, device):
        return self

    def __call__(self, x):
        return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def test_progressive_inpaint_deblurs_the_finished_texture_with_the_upscale_model(env, recorder):
    """The authors' order (IDsculpt_tex.py initialize_texture): inpaint and fill, then deblur, then refine. With
    the sampler recorded (deterministic), the node's texture with an upscale model equals core's deblur of the
    texture the node gives without one."""
    from idsculpt.core.texture.deblur import deblur_texture

    kw = dict(head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae, denoise=0.95,
              control_strength=1.0, texture_size="256", max_faces=100000, view_plan="-15, 0; -15, 180", resolution=RES,
              erode_iterations=8, cos_threshold=0.0, policy="first", **_sampler())
    plain = env.ci.run_node(env.nodes["IDSculptProgressiveInpaint"], **kw).args[0]
    deblurred = env.ci.run_node(env.nodes["IDSculptProgressiveInpaint"], upscale_model=_NearestX2(), **kw).args[0]
    expected = deblur_texture(plain.texture, _NearestX2(), 2)
    assert not torch.equal(expected, plain.texture)  # the deblur changes this texture (8-bit, bicubic half size)
    assert (deblurred.texture - expected).abs().max() <= 1.5 / 255
    assert torch.equal(deblurred.uvs, plain.uvs)


def test_progressive_inpaint_deblurs_with_comfyuis_upscale_model(env, recorder):
    """The real path: a (tiny, random) RealESRGAN x2 file through ComfyUI's own Load Upscale Model into the node,
    run as ComfyUI runs nodes (under inference mode; the loader's weights are inference tensors, which an
    autograd-recording forward cannot save: it must run without autograd)."""
    import os

    from build_test_models import write_realesrgan_x2
    from comfy_extras.nodes_upscale_model import UpscaleModelLoader

    folder = env.ci.folder_paths.get_folder_paths("upscale_models")[0]
    write_realesrgan_x2(os.path.join(folder, "RealESRGAN_x2_node_test.pth"), "small", 3)
    try:
        (model,) = env.ci.run_node(UpscaleModelLoader, model_name="RealESRGAN_x2_node_test.pth").args
        head = env.ci.run_node(
            env.nodes["IDSculptProgressiveInpaint"], head=env.head, model=env.model, positive=env.pos, negative=env.neg,
            vae=env.vae, denoise=0.95, control_strength=1.0, texture_size="256", max_faces=100000, view_plan="-15, 0",
            resolution=RES, erode_iterations=8, cos_threshold=0.0, policy="first", upscale_model=model, **_sampler(),
        ).args[0]
    finally:
        os.remove(os.path.join(folder, "RealESRGAN_x2_node_test.pth"))
    tex = head.texture
    assert tex.shape == (256, 256, 3) and bool(torch.isfinite(tex).all())
    assert torch.equal(tex * 255, (tex * 255).round())  # the deblur's 8-bit grid: it ran


def test_upscale_model_moves_and_runs_only_under_inference_mode(comfy_inprocess):
    """ComfyUI's upscale-model weights are inference tensors: moving them to the GPU (or running them with autograd)
    outside inference mode fails on CUDA ("Inference tensors do not track version counter"; seen on an H100, a CPU
    move is a no-op and hides it). The wrapper must do both under inference mode, whatever mode its caller is in."""
    from idsculpt.nodes.upscale import comfy_upscaler

    seen = []

    class Strict(_NearestX2):
        def to(self, device):
            seen.append(("to", torch.is_inference_mode_enabled()))
            return self

        def __call__(self, x):
            seen.append(("call", torch.is_inference_mode_enabled()))
            return super().__call__(x)

    upscale, scale = comfy_upscaler(Strict())
    with torch.inference_mode(False), torch.enable_grad():
        out = upscale(torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 3, 16, 16) and scale == 2
    assert seen and all(inference for _, inference in seen), seen


# ------------------------------------------------------------------------------------ interrupt + progress
@pytest.fixture
def progress_hook():
    """ComfyUI's global progress hook (the server's sends websocket events and checks for Cancel), recording
    ``(value, total, has_preview)``; ``hook.cancel_at`` sets ComfyUI's interrupt flag when the bar reaches it."""
    import comfy.model_management as mm
    import comfy.utils

    seen: list = []

    def hook(value, total, preview, node_id=None):
        seen.append((value, total, preview is not None))
        if hook.cancel_at is not None and value >= hook.cancel_at:
            mm.interrupt_current_processing(True)

    hook.cancel_at, hook.seen = None, seen
    before = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield hook
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
        mm.interrupt_current_processing(False)


def _inpaint_kw(env, steps: int, plan: str) -> dict:
    return dict(head=env.head, model=env.model, positive=env.pos, negative=env.neg, vae=env.vae, reference_image=env.portrait,
                reference_camera=env.camera, reference_mask=None, denoise=0.95, control_strength=1.0, texture_size="512",
                max_faces=100000, view_plan=plan, resolution=RES, erode_iterations=8, cos_threshold=0.0, policy="first",
                **_sampler(steps=steps))


def test_progressive_inpaint_bar_counts_sampler_steps_and_cancel_stops_inside_a_view(env, progress_hook, monkeypatch):
    import comfy.model_management as mm

    from idsculpt.nodes.engines import cuda_graphs

    steps, plan = 3, "-15, 90; -15, -90"  # the portrait (1) + 2 views x 3 sampler steps = 7
    env.ci.run_node(env.nodes["IDSculptProgressiveInpaint"], **_inpaint_kw(env, steps, plan))
    values = [v for v, _, _ in progress_hook.seen]
    assert {t for _, t, _ in progress_hook.seen} == {1 + 2 * steps}
    assert values == sorted(values) and values[-1] == 1 + 2 * steps
    assert set(range(1, 1 + 2 * steps + 1)) <= set(values)  # every sampler step moves the bar
    # the view previews still come, at the end of each view (after the portrait's at 1)
    assert [v for v, _, p in progress_hook.seen if p] == [1, 1 + steps, 1 + 2 * steps]

    # Cancel at the 2nd sampler step of the first view: the node stops there, not at the end of the view,
    # and the sampling's CUDA graphs are closed on the way out
    closed = []
    real_close = cuda_graphs.DiffusionGraphs.close
    monkeypatch.setattr(cuda_graphs.DiffusionGraphs, "close", lambda self: (closed.append(1), real_close(self))[1])
    progress_hook.seen.clear()
    progress_hook.cancel_at = 1 + 2
    with pytest.raises(mm.InterruptProcessingException):
        env.ci.run_node(env.nodes["IDSculptProgressiveInpaint"], **_inpaint_kw(env, 50, plan))
    assert max(v for v, _, _ in progress_hook.seen) == 3 and closed == [1]
    assert not mm.processing_interrupted()  # the flag was consumed by the check that raised


def _cancel_in_unet(env, when: str, steps: int = 20):
    """Texture Refine's SDEdit denoise (no bar inside it) with a UNet wrapper that sets ComfyUI's interrupt
    flag on its first call, ``before`` or ``after`` the UNet runs. Returns (UNet calls started, finished)."""
    import comfy.model_management as mm

    from idsculpt.nodes.engines.sampling import ComfyDenoiser, ComfySampling

    started, finished = [], []

    def unet(apply_model, args):
        started.append(1)
        if when == "before":
            mm.interrupt_current_processing(True)
        out = apply_model(args["input"], args["timestep"], **args["c"])
        finished.append(1)
        if when == "after":
            mm.interrupt_current_processing(True)
        return out

    model = env.model.clone()
    model.set_model_unet_function_wrapper(unet)
    s = ComfySampling(model, env.pos, env.neg, env.vae, None, steps=steps, cfg=3.0, cuda_graphs=False)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ComfyDenoiser(s).denoise(torch.rand(RES, RES, 3), None, None, 150)
    finally:
        s.close()
        mm.interrupt_current_processing(False)
    return len(started), len(finished)


def test_sampling_checks_for_cancel_inside_the_unet_and_after_every_sampler_step(env):
    """Cancel during a UNet call stops that call between its blocks (one step of SD1.5 at 512 px takes
    seconds on a CPU); Cancel after a call stops before the next sampler step (the sampler's callback).
    Cond and uncond share one batched UNet call per step here."""
    assert _cancel_in_unet(env, "before") == (1, 0)
    assert _cancel_in_unet(env, "after") == (1, 1)
