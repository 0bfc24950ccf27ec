"""The nodes' cross-field checks (``validate_inputs``) run inside ComfyUI's own prompt validation
(``execution.validate_prompt``, what ``POST /prompt`` calls) in-process: a contradicting prompt is refused before
any node executes, with a message naming the widget and the cause; the same prompt with consistent values passes
our checks. Links are left unconnected or come from a loader node in the prompt, so nothing heavy runs.
"""
from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def check(comfy_inprocess):
    """``check(prompt) -> {node id: [custom validation messages]}`` through ComfyUI's validate_prompt, with the
    pack's nodes registered as ComfyUI registers them (NODE_CLASS_MAPPINGS by node id)."""
    import execution
    import nodes

    pack = comfy_inprocess.load_pack_nodes()
    added = {k: v for k, v in pack.items() if k not in nodes.NODE_CLASS_MAPPINGS}
    nodes.NODE_CLASS_MAPPINGS.update(added)

    def run(prompt: dict) -> dict:
        _, _, _, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
        return {k: [e["details"] for e in v["errors"] if e["type"] == "custom_validation_failed"] for k, v in node_errors.items()}

    yield run
    for k in added:
        nodes.NODE_CLASS_MAPPINGS.pop(k, None)


def _save(source: str, slot: int = 0) -> dict:
    """An output node fed by ``source``: validation walks back from outputs, so every test prompt ends in one."""
    return {"class_type": "IDSculptSaveHead", "inputs": {"head": [source, slot], "filename_prefix": "x", "save_obj": False}}


def _messages(errors: dict, node: str) -> str:
    return " | ".join(errors.get(node, []))


# ------------------------------------------------------------------------------------------------ Texture Refine
def _refine(**widgets) -> dict:
    base = dict(seed=0, steps=20, cfg=10.0, sampler_name="ddim", scheduler="ddim_uniform", refine_steps=400, t_min=50,
                t_max=200, learning_rate=0.02, control_strength=1.0, resolution=512, perceptual_model="none")
    base.update(widgets)
    return {"1": {"class_type": "IDSculptTextureRefine", "inputs": base}, "9": _save("1")}


def test_texture_refine_refuses_t_min_not_below_t_max(check):
    errors = check(_refine(t_min=250, t_max=200))
    msg = _messages(errors, "1")
    assert "t_min (250) must be below t_max (200)" in msg and "[t_min, t_max)" in msg
    assert _messages(check(_refine(t_min=200, t_max=200)), "1")  # equal: an empty range
    assert not _messages(check(_refine(t_min=199, t_max=200)), "1")


def test_named_widgets_keep_comfyuis_bounds(check):
    """ComfyUI skips min/max for the inputs validate_inputs names: ours checks them instead (t_max's max is 999)."""
    msg = _messages(check(_refine(t_max=1500)), "1")
    assert "t_max: value 1500 bigger than max of 999" in msg
    msg = _messages(check(_refine(resolution=100)), "1")
    assert "resolution (100) must be a multiple of 8" in msg


def test_denoise_batch_below_one_is_refused(check):
    assert "denoise_batch: value 0 smaller than min of 1" in _messages(check(_refine(denoise_batch=0)), "1")
    assert not _messages(check(_refine(denoise_batch=4)), "1")


def test_reference_image_without_its_camera_is_refused(check):
    prompt = _refine()
    prompt["2"] = {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}}
    prompt["1"]["inputs"]["reference_image"] = ["2", 0]
    msg = _messages(check(prompt), "1")
    assert "reference_image is connected but reference_camera is not" in msg


# ------------------------------------------------------------------------------------------- Progressive Inpaint
def _inpaint(**widgets) -> dict:
    base = dict(seed=0, steps=20, cfg=10.0, sampler_name="ddim", scheduler="ddim_uniform", denoise=0.95, control_strength=1.0,
                texture_size="1024", max_faces=100000, view_plan="default", resolution=512, erode_iterations=8,
                cos_threshold=0.0, policy="first")
    base.update(widgets)
    return {"1": {"class_type": "IDSculptProgressiveInpaint", "inputs": base}, "9": _save("1")}


def test_progressive_inpaint_refuses_a_bad_view_plan_and_texture_size(check):
    msg = _messages(check(_inpaint(view_plan="0, 0\n95, 10")), "1")
    assert "view_plan: view plan entry 2: |elevation| must be below 90° (got 95.0)" in msg
    msg = _messages(check(_inpaint(texture_size="999")), "1")
    assert "texture_size: '999' is not one of its options" in msg
    assert not _messages(check(_inpaint(view_plan="0, 0; -15, 45")), "1")


# ---------------------------------------------------------------------------------------------- DMTet Sculpt
def _sculpt(**widgets) -> dict:
    base = dict(steps=6000, gan_steps=1000, grid_resolution=256, lr=0.005, render_resolution=512, guidance_views=1,
                guidance_weight=1.0, ref_normal_weight=10000.0, ref_depth_weight=100.0, ref_mask_weight=100.0,
                normal_consistency_start=500.0, normal_consistency_end=10000.0, laplacian_start=1e5, laplacian_end=1.5e5,
                seed=0, vram_mode="offload")
    base.update(widgets)
    return {"1": {"class_type": "IDSculptDMTetSculpt", "inputs": base}, "9": _save("1")}


def test_dmtet_sculpt_refuses_gan_steps_beyond_steps(check):
    msg = _messages(check(_sculpt(steps=500, gan_steps=1000)), "1")
    assert "gan_steps (1000) is more than steps (500)" in msg
    assert not _messages(check(_sculpt(steps=1000, gan_steps=1000)), "1")


# ---------------------------------------------------------------------------------------------- PanoHead Invert
def _invert(panohead: bool, **widgets) -> dict:
    base = dict(init="auto", w_steps=500, pti_steps=500, mesh_resolution=512, mesh_level=20.0, view_resolution=256, seed=0)
    base.update(widgets)
    prompt = {"1": {"class_type": "IDSculptPanoHeadInvert", "inputs": base}, "9": _save("1")}
    if panohead:
        prompt["2"] = {"class_type": "IDSculptPanoHeadLoader", "inputs": {"checkpoint": "auto", "vgg16": "auto"}}
        base["panohead"] = ["2", 0]
    return prompt


def test_panohead_invert_refuses_zero_steps_and_a_missing_loader(check):
    msg = _messages(check(_invert(True, w_steps=0, pti_steps=0)), "1")
    assert "w_steps and pti_steps are both 0" in msg
    assert not _messages(check(_invert(True, w_steps=0, pti_steps=500)), "1")
    assert not _messages(check(_invert(False, w_steps=0, pti_steps=0)), "1")  # template head: the steps are unused
    msg = _messages(check(_invert(False, init="panohead")), "1")
    assert "init is 'panohead' but the panohead input is not connected" in msg


# ---------------------------------------------------------------------------------------------- Place Head Mesh
def _place(**widgets) -> dict:
    base = dict(up_axis="+y", front_axis="+z", view_resolution=256)
    base.update(widgets)
    return {"1": {"class_type": "IDSculptPlaceHeadMesh", "inputs": base}, "2": {"class_type": "IDSculptLoadHead", "inputs": {"file": "h.glb"}},
            "9": _save("1")}


def test_place_head_mesh_refuses_parallel_axes_and_wants_one_mesh(check):
    prompt = _place(up_axis="+z", front_axis="-z")
    prompt["1"]["inputs"]["head"] = ["2", 0]
    msg = _messages(check(prompt), "1")
    assert "up_axis (+z) and front_axis (-z) lie on one axis" in msg
    assert "neither" not in msg
    msg = _messages(check(_place()), "1")
    assert "connect either 'head'" in msg and "neither is" in msg
    prompt = _place()
    prompt["1"]["inputs"]["head"] = ["2", 0]
    assert not _messages(check(prompt), "1")


# ---------------------------------------------------------------------------------------------- Apply ID Adapter
def test_apply_id_adapter_refuses_start_after_end(check):
    prompt = {"1": {"class_type": "IDSculptApplyIDAdapter", "inputs": {"weight": 1.0, "start_percent": 0.8, "end_percent": 0.2}},
              "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "ddim",
                                                          "scheduler": "normal", "denoise": 1.0}},
              "10": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "x"}},
              "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0]}}}
    msg = _messages(check(prompt), "1")
    assert "start_percent (0.8) is after end_percent (0.2)" in msg
    prompt["1"]["inputs"]["start_percent"] = 0.2
    assert not _messages(check(prompt), "1")


# ---------------------------------------------------------------------------------------------- Evaluate Head
def test_evaluate_head_refuses_a_label_that_is_not_25_numbers(check):
    inputs = dict(insightface_model="buffalo_l", independent_recognizer=True, side_azimuth="60", sweep_step=15, resolution=512,
                  background=1.0, reference_background="input", filename_prefix="x", reference_label="1 2 3")
    prompt = {"1": {"class_type": "IDSculptEvaluateHead", "inputs": inputs}}
    msg = _messages(check(prompt), "1")
    assert "reference_label: an EG3D camera label has 25 numbers (cam2world 16 + intrinsics 9), got 3" in msg
    inputs["reference_label"] = " ".join(["1"] * 25)
    assert not _messages(check(prompt), "1")


# ---------------------------------------------------------------------------------------------- ISD Guidance
def _isd(**widgets) -> dict:
    base = dict(cfg=50.0, t_min=20, t_max=500, id_azimuth_limit=70.0, control_strength=1.0, anneal="none", t_max_final=200,
                grad_clip=0.0, resolution=512, seed=0, estimator="authors", vae_posterior="sample")
    base.update(widgets)
    sculpt = _sculpt()
    sculpt["1"]["inputs"]["guidance"] = ["2", 0]
    sculpt["2"] = {"class_type": "IDSculptISDGuidance", "inputs": base}
    return sculpt


def test_isd_guidance_refuses_an_inverted_range_and_a_final_t_max_outside_it(check):
    msg = _messages(check(_isd(t_min=600, t_max=500)), "2")
    assert "t_min (600) is above t_max (500)" in msg
    assert not _messages(check(_isd(t_min=500, t_max=500)), "2")  # one timestep: allowed (ISD draws from [t_min, t_max])
    msg = _messages(check(_isd(anneal="linear", t_max_final=700)), "2")
    assert "t_max_final (700) must lie in [t_min, t_max] = [20, 500]" in msg
    assert not _messages(check(_isd(anneal="none", t_max_final=700)), "2")  # unused without annealing
    assert not _messages(check(_isd(anneal="sqrt", t_max_final=200)), "2")
    assert "resolution (100) must be a multiple of 8" in _messages(check(_isd(resolution=100)), "2")


# ---------------------------------------------------------------------------------------------- shipped workflows
@pytest.mark.parametrize("name", ["geometry", "full", "full_multiphoto", "full_stylised", "full_from_mesh"])
def test_shipped_workflows_pass_every_check(comfy_inprocess, name):
    """Each IDSculpt node of the API twins, given its widget values as ComfyUI passes them to validate_inputs (a
    link as None, an unconnected optional input not at all), passes (the server test validates whole prompts)."""
    import inspect
    import json
    import os

    pack = comfy_inprocess.load_pack_nodes()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "workflows", "api", f"{name}.json"), encoding="utf-8") as fh:
        prompt = json.load(fh)
    checked = 0
    for nid, node in prompt.items():
        cls = pack.get(node["class_type"])
        if cls is None or "validate_inputs" not in cls.__dict__:
            continue
        params = inspect.signature(cls.validate_inputs).parameters
        given = {k: (None if isinstance(v, list) else v) for k, v in node["inputs"].items() if k in params}
        assert cls.validate_inputs(**given) is True, (name, nid, node["class_type"])
        checked += 1
    assert checked >= 3
