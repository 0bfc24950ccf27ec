"""ID adapter patch + ISD noise predictor inside a real ComfyUI, on tiny SD1.5-shaped models (CPU).

Needs COMFYUI_PATH and a Python that imports ComfyUI (run with its venv); skipped otherwise.
"""
from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from idsculpt.core.camera import Cameras
from idsculpt.core.guidance import ViewBatch
from tiny_models import tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae, write_tiny_faceid_adapter

pytestmark = pytest.mark.comfy

RES = 64  # render size; latents 8x8


@pytest.fixture(scope="module")
def env(comfy_inprocess, tmp_path_factory):
    from idsculpt.core.face.id_adapter import load_id_adapter

    d = tmp_path_factory.mktemp("isd")
    adapter = load_id_adapter(write_tiny_faceid_adapter(str(d / "faceid.bin"), scale=4.0))
    g = torch.Generator().manual_seed(0)
    return types.SimpleNamespace(
        ci=comfy_inprocess, model=tiny_sd15_model(), vae=tiny_vae(), controlnet=tiny_controlnet(), adapter=adapter,
        emb1=F.normalize(torch.randn(512, generator=g), dim=0), emb2=F.normalize(torch.randn(512, generator=g), dim=0),
        pos=tiny_conditioning(3), neg=tiny_conditioning(4),
    )


@pytest.fixture(scope="module")
def shared(env):
    """Predictions several tests compare against (computed once: each UNet call costs ~1 s on CPU)."""
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    m1 = apply_id_adapter(env.model, env.adapter, env.emb1)
    return types.SimpleNamespace(m1=m1, base=_predict(env, env.model), on=_predict(env, m1))


class RandomLandmarks:
    """Stand-in for core.face.align.FaceLandmarks3D: ``draw(cameras) -> [B,H,W,3]`` (records calls)."""

    def __init__(self, seed: int) -> None:
        self.seed, self.calls = seed, []

    def draw(self, cameras: Cameras) -> torch.Tensor:
        self.calls.append(cameras)
        g = torch.Generator().manual_seed(self.seed)
        return (torch.rand(len(cameras), cameras.height, cameras.width, 3, generator=g) > 0.9).float()


def _views(b: int = 2, id_enabled=None, sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, ViewBatch]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, 4, RES // 8, RES // 8, generator=g) * 2
    s = torch.full((b,), sigma)
    cams = Cameras.orbit(0.0, [0.0, 40.0, 100.0, -30.0][:b], 4.0, resolution=RES)
    en = torch.ones(b, dtype=torch.bool) if id_enabled is None else torch.tensor(id_enabled)
    return x, s, ViewBatch(torch.zeros(b), torch.zeros(b), en, torch.full((b,), 300), s, cams)


def _predict(env, model, views=None, control=False, landmarks=None, model_options_extra=None):
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    x, s, v = views or _views()
    p = ComfyNoisePredictor(model, env.pos, env.neg, env.vae, env.controlnet if control else None,
                            landmarks if control else None, resolution=RES)
    if model_options_extra:
        model = model.clone()
        model.model_options["transformer_options"].update(model_options_extra)
        p.model = model
    with torch.inference_mode(False):
        return p.predict_noise(x, s, v)


def test_id_tokens_change_cond_not_uncond(env, shared) -> None:
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    base, p1 = shared.base, shared.on
    m2 = apply_id_adapter(env.model, env.adapter, env.emb2)
    p2 = _predict(env, m2)
    assert (p1.cond - base.cond).abs().max() > 1e-3  # ID tokens act on the positive branch
    assert (p1.cond - p2.cond).abs().max() > 1e-3  # ... and depend on the identity
    assert torch.allclose(p1.uncond, p2.uncond, atol=1e-5)  # negative branch never sees the identity
    m_none = apply_id_adapter(env.model, env.adapter, env.emb1, uncond="none")
    pn = _predict(env, m_none)
    assert torch.allclose(pn.uncond, base.uncond, atol=1e-5)  # 'none': negative branch untouched
    assert torch.allclose(pn.cond, p1.cond, atol=1e-5)
    # the original model is not modified by applying the adapter (a clone is patched)
    assert "patches_replace" not in env.model.model_options["transformer_options"]


def test_id_switch_per_view_and_per_call(env, shared) -> None:
    from idsculpt.nodes.engines.id_patch import ID_ENABLED_KEY, apply_id_adapter

    m1, base, on = shared.m1, shared.base, shared.on
    mixed = _predict(env, m1, views=_views(id_enabled=[True, False]))
    assert torch.allclose(mixed.cond[0], on.cond[0], atol=1e-5)
    assert torch.allclose(mixed.cond[1], base.cond[1], atol=1e-5)  # view 1: ID off -> plain model
    assert torch.allclose(mixed.uncond[1], base.uncond[1], atol=1e-5)
    # start/end window outside the sampled sigma -> no ID
    late = apply_id_adapter(env.model, env.adapter, env.emb1, start_percent=0.9, end_percent=1.0)
    assert torch.allclose(_predict(env, late).cond, base.cond, atol=1e-5)
    # a KSampler-style global switch in transformer_options
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    off = m1.clone()
    off.model_options["transformer_options"][ID_ENABLED_KEY] = False
    x, s, v = _views()
    p = ComfyNoisePredictor(off, env.pos, env.neg, env.vae, resolution=RES)
    with torch.inference_mode(False):
        p.open()
        try:
            p._state["model_options"]["transformer_options"][ID_ENABLED_KEY] = False
            # our predictor sets the switch True per call; emulate a KSampler call without it
            import comfy.samplers

            real = p._state["real_model"]
            conds = comfy.samplers.process_conds(real, x, {k: [c.copy() for c in vv] for k, vv in p._state["conds"].items()}, p._state["device"])
            out = comfy.samplers.calc_cond_batch(real, [conds["positive"]], x, s, p._state["model_options"])[0]
        finally:
            p.close()
    assert torch.allclose((x - out) / s.view(-1, 1, 1, 1), base.cond, atol=1e-5)


def test_upstream_patches_stay_active(env, shared) -> None:
    """Another pack's attn2 replacement and a LoRA-style weight patch both act during ISD."""
    import comfy.ldm.modules.attention as attn

    from idsculpt.core.face.id_adapter import SD15_ATTN2_BLOCKS
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    seen = []

    def upstream(q, k, v, extra_options):
        seen.append(extra_options["block"])
        return attn.optimized_attention(q, k, v, extra_options["n_heads"]) * 0.0  # drops the text branch

    m = env.model.clone()
    for (name, number), _ in SD15_ATTN2_BLOCKS:
        m.set_model_attn2_replace(upstream, name, number, 0 if name == "middle" else None)
    mid = apply_id_adapter(m, env.adapter, env.emb1)
    p_up = _predict(env, mid)
    assert len(set(seen)) == 16  # every cross-attention block went through the chained patch
    assert (p_up.cond - shared.on.cond).abs().max() > 1e-3
    # LoRA-style weight patch: zero the UNet's output conv -> eps == 0 exactly for both branches
    lora = mid.clone()
    w = lora.model.diffusion_model.out[2].weight
    b = lora.model.diffusion_model.out[2].bias
    lora.add_patches({"diffusion_model.out.2.weight": (-w.detach().clone(),), "diffusion_model.out.2.bias": (-b.detach().clone(),)}, 1.0)
    p_lora = _predict(env, lora)
    assert p_lora.cond.abs().max() < 1e-5 and p_lora.uncond.abs().max() < 1e-5
    # the LoRA lives on its clone only: the un-patched model predicts as before (ComfyUI re-patches on load)
    assert torch.allclose(_predict(env, mid).cond, p_up.cond, atol=1e-5)


def test_landmark_hint_reaches_controlnet(env, shared) -> None:
    m1, none = shared.m1, shared.on
    la, lb = RandomLandmarks(1), RandomLandmarks(2)
    pa = _predict(env, m1, control=True, landmarks=la)
    pa2 = _predict(env, m1, control=True, landmarks=RandomLandmarks(1))
    pb = _predict(env, m1, control=True, landmarks=lb)
    assert len(la.calls) == 1 and len(la.calls[0]) == 2 and la.calls[0].height == RES
    assert (pa.cond - none.cond).abs().max() > 1e-3
    same = (pa.cond - pa2.cond).abs().max()  # same hint -> same prediction (fresh copies, no stale hint)
    diff = (pa.cond - pb.cond).abs().max()  # a different hint -> a different prediction
    assert same < 1e-6 and diff > 1e-5 and diff > 100 * same


class PrefetchingLandmarks(RandomLandmarks):
    """With ``draw_async`` (as FaceLandmarks3D): the predictor may start drawing before the render."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.started = []

    def draw_async(self, cameras: Cameras):
        self.started.append(cameras)
        return types.SimpleNamespace(result=lambda: RandomLandmarks.draw(self, cameras))


def test_prefetched_landmark_hint_is_the_one_drawn_for_the_step(env, shared) -> None:
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    x, s, v = _views()
    plain = _predict(env, shared.m1, (x, s, v), control=True, landmarks=RandomLandmarks(1))
    lm = PrefetchingLandmarks(1)
    p = ComfyNoisePredictor(shared.m1, env.pos, env.neg, env.vae, env.controlnet, lm, resolution=RES)
    with torch.inference_mode(False):
        p.prefetch(v.cameras)
        pre = p.predict_noise(x, s, v)
        assert len(lm.started) == 1 and len(lm.calls) == 1  # drawn once, through the prefetch
        p.prefetch(Cameras.orbit(0.0, [5.0, 50.0], 4.0, resolution=RES))  # other cameras: not used for v
        p.predict_noise(x, s, v)
        assert len(lm.started) == 2 and len(lm.calls) == 2 and lm.calls[-1] is v.cameras
    assert torch.allclose(pre.cond, plain.cond, atol=1e-6) and torch.allclose(pre.uncond, plain.uncond, atol=1e-6)


def test_isd_gradient_through_vae(env) -> None:
    from idsculpt.nodes.engines.isd_guidance import build_isd_guidance
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    m1 = apply_id_adapter(env.model, env.adapter, env.emb1)
    lm = RandomLandmarks(3)
    g = build_isd_guidance(m1, env.pos, env.neg, env.vae, env.controlnet, lm, cfg=50.0, resolution=RES, seed=0)
    cams = Cameras.orbit(0.0, [10.0, 150.0], 4.0, resolution=RES)
    with torch.inference_mode(False), torch.enable_grad():
        img = torch.rand(2, RES, RES, 3).requires_grad_(True)
        with g:
            loss = g(img, cams, step=0, total_steps=10)
            loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert g.last_stats.id_enabled.tolist() == [True, False]
    assert 20 <= int(g.last_stats.t.min()) and int(g.last_stats.t.max()) <= 500
    assert len(lm.calls) == 1 and not g.predictor.is_open  # hints drawn once although ID/no-ID views ran apart
    assert g.config.estimator == "authors" and g.last_stats.extra["cond_no_id_rows"] == 1
    # the posterior noise comes from the guidance's seeded generator
    assert g.predictor.generator is g.generator and g.predictor.vae_posterior == "sample"
    # posterior="mean": the differentiable encoder is ComfyUI's VAE encode in the model's latent scale
    from idsculpt.nodes.engines.vae_encoder import DifferentiableVAEEncoder

    lf = m1.get_model_object("latent_format")
    with torch.inference_mode(False):
        img = img.detach()
        ours = DifferentiableVAEEncoder(env.vae, lf, torch.device("cpu"), posterior="mean")(img).detach()
        ref = lf.process_in(env.vae.encode(img))
        assert ours.shape == (2, 4, RES // 8, RES // 8) and torch.allclose(ours, ref, atol=1e-4, rtol=1e-4)
        # posterior="sample": mean + std * n for the generator's n, from the VAE's own moments
        sampled = DifferentiableVAEEncoder(env.vae, lf, torch.device("cpu"), generator=torch.Generator().manual_seed(5))(img)
        fsm = env.vae.first_stage_model
        with torch.no_grad():
            mean, logvar = fsm.quant_conv(fsm.encoder(img.movedim(-1, 1) * 2 - 1)).float().chunk(2, 1)
        n = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
        expect = lf.process_in(mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * n)
        assert torch.allclose(sampled.detach(), expect, atol=1e-4, rtol=1e-4)
        assert (sampled.detach() - ours).abs().max() > 1e-3


def test_patched_model_samples_in_ksampler(env) -> None:
    import comfy.sample

    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    m1 = apply_id_adapter(env.model, env.adapter, env.emb1)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    lat = torch.zeros(1, 4, 8, 8)
    with torch.inference_mode():
        a = comfy.sample.sample(m1, noise, 2, 5.0, "euler", "normal", env.pos, env.neg, lat, seed=0, disable_pbar=True)
        b = comfy.sample.sample(env.model, noise, 2, 5.0, "euler", "normal", env.pos, env.neg, lat, seed=0, disable_pbar=True)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3


def test_nodes_load_apply_and_refuse(env) -> None:
    from safetensors.torch import save_file

    from idsculpt.core.face.detect import FaceID

    ci = env.ci
    nodes = ci.load_pack_nodes()
    folder = ci.sandbox.model_dir("ipadapter")
    write_tiny_faceid_adapter(f"{folder}/ip-adapter-faceid-portrait-v11_tiny.safetensors")
    save_file({"image_proj.proj.weight": torch.zeros(256, 64), "image_proj.norm.weight": torch.zeros(64),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(32, 64)}, f"{folder}/ip-adapter_sd15.safetensors")
    loader, apply = nodes["IDSculptIDAdapterLoader"], nodes["IDSculptApplyIDAdapter"]
    ad = ci.run_node(loader, adapter_name="ip-adapter-faceid-portrait-v11_tiny.safetensors").result[0]
    assert ad.variant == "faceid-portrait"
    with pytest.raises(ValueError, match="plain IP-Adapter.*not a FaceID adapter"):
        ci.run_node(loader, adapter_name="ip-adapter_sd15.safetensors")
    face = FaceID(embedding=env.emb1, box=torch.zeros(4), keypoints=torch.zeros(5, 2), aligned_crop=torch.zeros(112, 112, 3), det_score=0.9)
    m = ci.run_node(apply, model=env.model, id_adapter=ad, face_id=face, weight=1.0, start_percent=0.0, end_percent=1.0).result[0]
    assert len(m.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16
    from idsculpt.nodes.engines.id_patch import has_id_adapter

    assert has_id_adapter(m) and not has_id_adapter(env.model)
    g = ci.run_node(nodes["IDSculptISDGuidance"], model=m, positive=env.pos, negative=env.neg, vae=env.vae, cfg=50.0,
                    t_min=20, t_max=500, id_azimuth_limit=70.0, resolution=RES).result[0]
    assert g.config.cfg == 50.0 and g.config.id_azimuth_limit == 70.0
    with pytest.raises(ValueError, match="both control_net"):
        ci.run_node(nodes["IDSculptISDGuidance"], model=m, positive=env.pos, negative=env.neg, vae=env.vae, cfg=50.0,
                    t_min=20, t_max=500, id_azimuth_limit=70.0, control_net=env.controlnet)


def test_view_dependent_prompts(env, shared) -> None:
    """Views get their own prompt (front/side) in one batch, also when the token lengths differ (repeated to
    their LCM, one UNet call); conds ComfyUI could not concatenate (LCM over 4x the shortest) fall back to groups."""
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    side = tiny_conditioning(5)
    # 154 tokens, a different prompt than side's: rows of 77 and 154 tokens share a batch (LCM 154)
    side_long = [[torch.cat([side[0][0], tiny_conditioning(6)[0][0]], 1), {}]]
    side_huge = [[side[0][0].repeat(1, 5, 1), {}]]  # 385 tokens: LCM with 77 is 5x the shortest, over ComfyUI's 4x
    x, s, v = _views(2)  # azimuths 0 (front) and 40 (front) -> make view 1 a side view
    v.azimuth = torch.tensor([0.0, 90.0])
    with torch.inference_mode(False):
        ref_side = ComfyNoisePredictor(shared.m1, side, env.neg, env.vae, resolution=RES).predict_noise(x, s, v)
        ref_long = ComfyNoisePredictor(shared.m1, side_long, env.neg, env.vae, resolution=RES).predict_noise(x, s, v)
        mixed = ComfyNoisePredictor(shared.m1, env.pos, env.neg, env.vae, resolution=RES,
                                    view_positive={"side": side}).predict_noise(x, s, v)
        longer = ComfyNoisePredictor(shared.m1, env.pos, env.neg, env.vae, resolution=RES, view_positive={"side": side_long})
        merged = longer.predict_noise(x, s, v)
        huge = ComfyNoisePredictor(shared.m1, env.pos, env.neg, env.vae, resolution=RES, view_positive={"side": side_huge})
        split = huge.predict_noise(x, s, v)
    assert torch.allclose(mixed.cond[0], shared.on.cond[0], atol=1e-4)
    assert torch.allclose(mixed.cond[1], ref_side.cond[1], atol=1e-4)
    assert torch.allclose(mixed.uncond, shared.on.uncond, atol=1e-4)
    assert longer.calls == 1  # one UNet call for both views, the front row repeated to 154 tokens
    assert torch.allclose(merged.cond[0], shared.on.cond[0], atol=1e-4)
    assert torch.allclose(merged.cond[1], ref_long.cond[1], atol=1e-4)
    assert (merged.cond[1] - ref_side.cond[1]).abs().max() > 1e-4  # the long prompt is its own prompt
    assert torch.allclose(merged.uncond, shared.on.uncond, atol=1e-4)
    assert huge.calls == 2  # cannot share rows: one call per (positive, negative) pair
    assert torch.allclose(split.cond[0], shared.on.cond[0], atol=1e-4)
    assert (split.cond[1] - shared.on.cond[1]).abs().max() > 1e-4


def test_layer_map_matches_full_size_sd15(comfy_inprocess) -> None:
    """The 16 adapter layers fit ComfyUI's real SD1.5 UNet (built on the meta device: no weights)."""
    import comfy.model_base
    import comfy.supported_models

    from idsculpt.core.face.id_adapter import SD15_ATTN2_BLOCKS, IDAdapter, IDAdapterInfo, sd15_layer_hidden
    from idsculpt.nodes.engines.id_patch import _check_layer_width
    from tiny_models import sd15_unet_config

    unet = comfy.model_base.BaseModel(comfy.supported_models.SD15(sd15_unet_config(full=True)), device="meta").diffusion_model
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    with torch.device("meta"):
        full = IDAdapter(IDAdapterInfo("faceid-portrait", 16, 768, 512, sd15_layer_hidden(), False))
    for (block, number), key in SD15_ATTN2_BLOCKS:
        _check_layer_width(unet, block, number, full, key)
    swapped = IDAdapter(IDAdapterInfo("faceid-portrait", 16, 768, 512, {**sd15_layer_hidden(), "13": 640, "19": 1280}, False)).to("meta")
    with pytest.raises(ValueError, match="do not belong together"):
        for (block, number), key in SD15_ATTN2_BLOCKS:
            _check_layer_width(unet, block, number, swapped, key)


def test_adapter_model_mismatch_is_refused(env, tmp_path) -> None:
    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    wide = load_id_adapter(write_tiny_faceid_adapter(str(tmp_path / "wide.bin"), cross_attention_dim=96))
    with pytest.raises(ValueError, match="context width 96"):
        apply_id_adapter(env.model, wide, env.emb1)
    with pytest.raises(ValueError, match="512"):
        apply_id_adapter(env.model, env.adapter, torch.zeros(128))


# ----------------------------------------------------------------------------- the authors' estimator row
class CallRecorder:
    """``model_function_wrapper`` recording each UNet call's cond_or_uncond (ComfyUI's batch layout)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, apply_model, args):
        self.calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])


def _recorded(model, rec: CallRecorder):
    m = model.clone()
    m.model_options["model_function_wrapper"] = rec
    return m


def _views_no_id(b, id_enabled, cond_no_id, azimuth=None):
    x, s, v = _views(b, id_enabled=id_enabled)
    v.cond_no_id = torch.tensor(cond_no_id)
    if azimuth is not None:
        v.azimuth = torch.tensor(azimuth)
    return x, s, v


def test_third_row_runs_with_id_off_in_the_same_call(env, shared) -> None:
    """cond_no_id of an ID view = the prediction without the ID patch; cond/uncond keep the ID (both
    CFG rows), and all three conds run in ONE batched UNet call."""
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    rec = CallRecorder()
    x, s, v = _views_no_id(2, [True, True], [True, True])
    p = ComfyNoisePredictor(_recorded(shared.m1, rec), env.pos, env.neg, env.vae, resolution=RES)
    with torch.inference_mode(False):
        out = p.predict_noise(x, s, v)
    assert len(rec.calls) == 1 and sorted(rec.calls[0]) == [0, 1, 2]
    assert torch.allclose(out.cond_no_id, shared.base.cond, atol=1e-5)  # = a call with the ID patch absent
    assert torch.allclose(out.cond, shared.on.cond, atol=1e-5)  # ID still on the positive row
    assert torch.allclose(out.uncond, shared.on.uncond, atol=1e-5)  # ... and the zero-ID negative row
    assert (out.cond_no_id - out.cond).abs().max() > 1e-3


def test_third_row_with_controlnet_and_mixed_views(env, shared) -> None:
    """Landmark ControlNet on all three rows; several views run in ONE call of a fixed shape (3 rows per
    view, so one CUDA graph serves every step); a view without ID keeps cond as its estimator."""
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    rec = CallRecorder()
    x, s, v = _views_no_id(2, [True, False], [True, False])
    ref_off = _predict(env, env.model, (x, s, v), control=True, landmarks=RandomLandmarks(1))  # no ID anywhere
    ref_on = _predict(env, shared.m1, _views(2), control=True, landmarks=RandomLandmarks(1))  # ID on both views
    lm = RandomLandmarks(1)
    p = ComfyNoisePredictor(_recorded(shared.m1, rec), env.pos, env.neg, env.vae, env.controlnet, lm, resolution=RES)
    with torch.inference_mode(False):
        out = p.predict_noise(x, s, v)
    assert [sorted(c) for c in rec.calls] == [[0, 1, 2]] and len(lm.calls) == 1
    assert torch.allclose(out.cond_no_id[0], ref_off.cond[0], atol=1e-5)
    assert torch.allclose(out.cond[0], ref_on.cond[0], atol=1e-5) and torch.allclose(out.uncond[0], ref_on.uncond[0], atol=1e-5)
    assert torch.allclose(out.cond[1], ref_off.cond[1], atol=1e-5) and torch.allclose(out.uncond[1], ref_off.uncond[1], atol=1e-5)
    assert torch.equal(out.cond_no_id[1], out.cond[1])  # ID already off there


def test_several_views_run_as_one_call_of_one_shape(env, shared) -> None:
    """Whatever views have ID on, four views are one UNet call of 3 x 4 rows (one CUDA graph for the whole
    sculpt), and each view's estimator is the ID-off row where asked, cond elsewhere."""
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    shapes: list = []

    def wrapper(apply_model, args):
        shapes.append((tuple(args["input"].shape), tuple(sorted(args["cond_or_uncond"]))))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = shared.m1.clone()
    m.model_options["model_function_wrapper"] = wrapper
    p = ComfyNoisePredictor(m, env.pos, env.neg, env.vae, resolution=RES)
    for pattern in ([True, False, False, False], [False] * 4, [True] * 4, [False, True, True, False]):
        x, s, v = _views_no_id(4, pattern, pattern)
        with torch.inference_mode(False):
            out = p.predict_noise(x, s, v)
        if any(pattern):
            for i, asked in enumerate(pattern):
                if asked:
                    assert (out.cond_no_id[i] - out.cond[i]).abs().max() > 1e-3  # the ID really is off there
                else:
                    assert torch.equal(out.cond_no_id[i], out.cond[i])
        else:
            assert out.cond_no_id is None
    assert len(shapes) == 4 and len(set(shapes)) == 1 and shapes[0][1] == (0, 1, 2), shapes


def test_no_extra_row_without_an_id_patch(env, shared) -> None:
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    rec = CallRecorder()
    x, s, v = _views_no_id(2, [True, True], [True, True])
    p = ComfyNoisePredictor(_recorded(env.model, rec), env.pos, env.neg, env.vae, resolution=RES)
    with torch.inference_mode(False):
        out = p.predict_noise(x, s, v)
    assert [sorted(c) for c in rec.calls] == [[0, 1]]
    assert torch.equal(out.cond_no_id, out.cond) and torch.allclose(out.cond, shared.base.cond, atol=1e-5)


def test_view_dependent_negatives(env, shared) -> None:
    """A back view (|az| > 120) runs with the back negative, a front view with the front positive,
    in one UNet call (equal token lengths), each row equal to a plain call with that pair."""
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    pos_front, neg_back = tiny_conditioning(11), tiny_conditioning(12)
    x, s, v = _views(2)
    v.azimuth = torch.tensor([10.0, 125.0])  # front, back (ISD thresholds: back |az| > 120)
    rec = CallRecorder()
    with torch.inference_mode(False):
        ref_front = ComfyNoisePredictor(shared.m1, pos_front, env.neg, env.vae, resolution=RES).predict_noise(x, s, v)
        ref_back = ComfyNoisePredictor(shared.m1, env.pos, neg_back, env.vae, resolution=RES).predict_noise(x, s, v)
        p = ComfyNoisePredictor(_recorded(shared.m1, rec), env.pos, env.neg, env.vae, resolution=RES,
                                view_positive={"front": pos_front, "side": env.pos}, view_negative={"back": neg_back})
        out = p.predict_noise(x, s, v)
    assert len(rec.calls) == 1
    assert p.view_positive.keys() == {"front"}  # "side" is the plain positive: no separate cond
    assert torch.allclose(out.cond[0], ref_front.cond[0], atol=1e-4) and torch.allclose(out.uncond[0], ref_front.uncond[0], atol=1e-4)
    assert torch.allclose(out.cond[1], ref_back.cond[1], atol=1e-4) and torch.allclose(out.uncond[1], ref_back.uncond[1], atol=1e-4)
    assert (out.uncond[1] - shared.on.uncond[1]).abs().max() > 1e-3  # the back negative did act


def test_isd_node_per_direction_inputs(env, shared) -> None:
    ci = env.ci
    nodes = ci.load_pack_nodes()
    node = nodes["IDSculptISDGuidance"]
    names = [i.id for i in node.define_schema().inputs]
    for sign in ("positive", "negative"):
        for d in ("front", "side", "back", "overhead"):
            assert f"{sign}_{d}" in names
    assert names.index("estimator") < names.index("positive_front") and names[-1] == "cuda_graphs"
    side, back_neg = tiny_conditioning(13), tiny_conditioning(14)
    g = ci.run_node(node, model=shared.m1, positive=env.pos, negative=env.neg, vae=env.vae, cfg=50.0, t_min=20, t_max=500,
                    id_azimuth_limit=70.0, resolution=RES, positive_side=side, negative_back=back_neg).result[0]
    assert g.predictor.view_positive == {"side": side} and g.predictor.view_negative == {"back": back_neg}
    assert g.predictor.view_thresholds == {"front": 45.0, "back": 60.0, "overhead": 60.0}
    assert g.config.estimator == "authors" and g.predictor.vae_posterior == "sample"
    g2 = ci.run_node(node, model=shared.m1, positive=env.pos, negative=env.neg, vae=env.vae, cfg=50.0, t_min=20, t_max=500,
                     id_azimuth_limit=70.0, resolution=RES, estimator="sds", vae_posterior="mean").result[0]
    assert g2.config.estimator == "sds" and g2.predictor.vae_posterior == "mean"


class _StubMoments(torch.nn.Module):
    """[B,3,H,W] in -1..1 -> moments [B,8,H/8,W/8]: mean = 8x8 average of channel 0 (x4 channels),
    log-variance = log(0.25) + 0.5 * 8x8 average of channel 1, so std = 0.5 * exp(0.25 * avg1)."""

    def forward(self, x):
        p = F.avg_pool2d(x, 8)
        return torch.cat([p[:, :1].expand(-1, 4, -1, -1), (math.log(0.25) + 0.5 * p[:, 1:2]).expand(-1, 4, -1, -1)], 1)


def test_encoder_posterior_sample_on_a_stub_vae(comfy_inprocess) -> None:
    """Known moments: the sample has their mean and std, the gradient reaches the image through both."""
    from idsculpt.nodes.engines.vae_encoder import DifferentiableVAEEncoder

    vae = types.SimpleNamespace(vae_dtype=torch.float32, latent_channels=4, process_input=lambda im: im * 2.0 - 1.0)
    lf = types.SimpleNamespace(process_in=lambda z: z * 0.18215)
    img = torch.full((1, 512, 512, 3), 0.75)  # -1..1: 0.5 -> mean 0.5, std 0.5 * exp(0.125)
    with torch.inference_mode(False):
        enc = DifferentiableVAEEncoder(vae, lf, torch.device("cpu"), generator=torch.Generator().manual_seed(0), encoder=_StubMoments())
        z = enc(img) / 0.18215
        assert abs(z.mean().item() - 0.5) < 0.01 and abs(z.std().item() - 0.5 * math.exp(0.125)) < 0.01
        # gradient: z = m + s n with dm/dimg0 = 2/64 per pixel, ds/dimg1 = s * 0.25 * 2/64
        x = torch.rand(1, 16, 16, 3).requires_grad_(True)
        enc = DifferentiableVAEEncoder(vae, lf, torch.device("cpu"), generator=torch.Generator().manual_seed(1), encoder=_StubMoments())
        (enc(x) / 0.18215).sum().backward()
        n = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
        p1 = F.avg_pool2d(x.detach().movedim(-1, 1) * 2 - 1, 8)[:, 1:2]
        std = 0.5 * torch.exp(0.25 * p1)
        g_img0 = torch.full((1, 1, 2, 2), 4 * 2 / 64)  # 4 latent channels share the mean
        g_img1 = (std * n * 0.25).sum(1, keepdim=True) * 2 / 64
        up = lambda t: F.interpolate(t, scale_factor=8, mode="nearest")[0].movedim(0, -1)
        assert torch.allclose(x.grad[0, ..., :1], up(g_img0), atol=1e-6)
        assert torch.allclose(x.grad[0, ..., 1:2], up(g_img1), atol=1e-6)
        assert x.grad[..., 1].abs().sum() > 0  # the log-variance path carries gradient too
        with pytest.raises(ValueError, match="posterior"):
            DifferentiableVAEEncoder(vae, lf, torch.device("cpu"), posterior="mode", encoder=_StubMoments())
        with pytest.raises(ValueError, match="get_sd"):  # no weights to build the encoder from
            DifferentiableVAEEncoder(vae, lf, torch.device("cpu"))


def test_multigpu_model_is_refused_by_name(env) -> None:
    """A MODEL from newer ComfyUI's 'MultiGPU CFG Split' carries copies for other GPUs in
    additional_models["multigpu"]; ISD (one device) refuses it before loading anything."""
    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    m = env.model.clone()
    m.set_additional_models("multigpu", [env.model.clone()])
    p = ComfyNoisePredictor(m, env.pos, env.neg, env.vae, resolution=RES)
    with torch.inference_mode(False), pytest.raises(ValueError, match="set up for 2 GPUs.*MultiGPU CFG Split"):
        p.open()
    assert not p.is_open


# -- the current CFGGuider's steps (review F4), with stand-ins for what 0.3.64 lacks ----------------------

def _upstream_inner_set_conds(self, conds):
    """CFGGuider.inner_set_conds of newer ComfyUI (samplers.py@311c0140), with its cond_has_hooks
    (sampler_helpers.py@53757775): a dynamic patcher whose conds carry hooks (or a ControlNet with extra
    hooks) is swapped for ``get_non_dynamic_delegate()`` before the conds are converted."""
    import comfy.sampler_helpers

    def cond_has_hooks(cond):
        for c in cond:
            if "hooks" in c[1]:
                return True
            if "control" in c[1] and len(c[1]["control"].get_extra_hooks()) > 0:
                return True
        return False

    for k in conds:
        if getattr(self.model_patcher, "is_dynamic", lambda: False)() and cond_has_hooks(conds[k]):
            self.model_patcher = self.model_patcher.get_non_dynamic_delegate()
        self.original_conds[k] = comfy.sampler_helpers.convert_cond(conds[k])


def _lifecycle_recorder(patcher, log: list, name: str):
    for meth in ("pre_run", "cleanup"):
        orig = getattr(patcher, meth)
        setattr(patcher, meth, lambda orig=orig, meth=meth: (log.append((name, meth)), orig())[1])


def test_hooked_conds_on_a_dynamic_model_run_on_its_delegate(env, shared, monkeypatch) -> None:
    """Newer ComfyUI: hooks on the conds + a dynamically loaded MODEL -> ISD loads, runs and cleans up the
    non-dynamic delegate, as its samplers do; unhooked conds keep the MODEL itself."""
    import comfy.hooks
    import comfy.samplers

    from idsculpt.nodes.engines.noise_predictor import ComfyNoisePredictor

    monkeypatch.setattr(comfy.samplers.CFGGuider, "inner_set_conds", _upstream_inner_set_conds)
    log: list = []
    dyn, delegate = env.model.clone(), env.model.clone()
    dyn.is_dynamic = lambda: True
    dyn.get_non_dynamic_delegate = lambda: delegate
    _lifecycle_recorder(dyn, log, "dynamic")
    _lifecycle_recorder(delegate, log, "delegate")
    hooked = [[env.pos[0][0], dict(env.pos[0][1], hooks=comfy.hooks.HookGroup())]]
    x, s, v = _views()
    p = ComfyNoisePredictor(dyn, hooked, env.neg, env.vae, resolution=RES)
    with torch.inference_mode(False):
        out = p.predict_noise(x, s, v)
    assert log == [("delegate", "pre_run"), ("delegate", "cleanup")]
    assert torch.allclose(out.cond, shared.base.cond, atol=1e-5)  # same weights, same prediction
    assert dyn.hook_mode == delegate.hook_mode == comfy.hooks.EnumHookMode.MaxSpeed  # restored
    log.clear()
    p = ComfyNoisePredictor(dyn, env.pos, env.neg, env.vae, resolution=RES)
    with torch.inference_mode(False):
        p.open()
        p.close()
    assert log == [("dynamic", "pre_run"), ("dynamic", "cleanup")]


def test_device_context_and_latent_shapes_where_the_host_has_them(env, shared, monkeypatch) -> None:
    """Newer ComfyUI: loading, every prediction and cleanup run inside model_management.cuda_device_context
    of the model's device, and each call gives the model and process_conds the latent's shape."""
    import contextlib

    import comfy.model_management
    import comfy.samplers

    events: list = []
    inside = []

    @contextlib.contextmanager
    def cuda_device_context(device):
        events.append(("enter", device))
        inside.append(device)
        try:
            yield
        finally:
            inside.pop()
            events.append(("exit", device))

    orig_process, orig_calc = comfy.samplers.process_conds, comfy.samplers.calc_cond_batch
    shapes_seen = []

    def process_conds(model, noise, conds, device, latent_image=None, denoise_mask=None, seed=None, latent_shapes=None):
        shapes_seen.append(latent_shapes)
        return orig_process(model, noise, conds, device, latent_image, denoise_mask, seed)

    def calc_cond_batch(*a, **k):
        events.append(("calc", bool(inside)))
        return orig_calc(*a, **k)

    monkeypatch.setattr(comfy.model_management, "cuda_device_context", cuda_device_context, raising=False)
    monkeypatch.setattr(comfy.samplers, "process_conds", process_conds)
    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", calc_cond_batch)
    monkeypatch.setattr(env.model.model, "latent_shapes", [(9, 9)], raising=False)  # left by an earlier run
    x, s, v = _views()
    out = _predict(env, env.model)
    dev = env.model.load_device
    assert events == [("enter", dev), ("exit", dev), ("enter", dev), ("calc", True), ("exit", dev),
                      ("enter", dev), ("exit", dev)]  # open, predict, close
    assert shapes_seen == [[x.shape]] and env.model.model.latent_shapes == [x.shape]  # one call, one shape
    assert torch.allclose(out.cond, shared.base.cond, atol=1e-5)
