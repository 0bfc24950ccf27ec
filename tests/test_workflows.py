"""The shareable workflows (workflows/*.json and their API twins workflows/api/*.json, made by
scripts/make_workflows.py).

Without ComfyUI (fast): the files are what the generator writes; each API twin is what the editor's
"Export (API)" would make of its UI file (an independent re-implementation of the frontend's
conversion, with its widget rules); every node type is core ComfyUI or ours; the settings follow
docs REFERENCE.md; every model file name is one the model table (core/models.py) accepts; workflows/ holds
nothing but the UI files (ComfyUI lists every workflows/*.json as a template).

With ComfyUI (``-m comfy``): every UI node type exists in the live /object_info; the files are current
with the live node definitions; the server's template list (GET /workflow_templates) is exactly the UI
workflows; every API twin passes ComfyUI's own prompt validation (POST /prompt)
with correctly named random-weight models (tests/build_test_models.py) in the model folders; and
(``slow``) the geometry workflow, steps and resolutions lowered, runs from a real portrait to a GLB,
with PanoHead and with the template head.
"""
from __future__ import annotations

import copy
import fnmatch
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import comfy_harness as ch
from idsculpt.core import models as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WF_DIR = os.path.join(ROOT, "workflows")
NAMES = ("geometry", "full", "full_paper", "full_stylised", "full_multiphoto", "full_from_mesh")
#: the head mesh full_from_mesh loads (tests put one made from the template head into the input folder)
HEAD_GLB = "head_mesh.glb"
PORTRAIT = os.path.join(os.path.dirname(ROOT), "shared", "data", "portraits", "jolie_1.jpg")
BUILDER = os.path.join(ROOT, "tests", "build_test_models.py")


def _generator():
    spec = importlib.util.spec_from_file_location("idsculpt_make_workflows", os.path.join(ROOT, "scripts", "make_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


MW = _generator()
SNAP = MW.load_snapshot()


def load(name: str) -> dict:
    with open(os.path.join(WF_DIR, name), encoding="utf-8") as fh:
        return json.load(fh)


# --------------------------------------------------------------------------- UI -> API, as the frontend does it
# Written independently of the generator (only the /object_info snapshot is shared), so a mistake in
# the generator's widget handling shows up as a mismatch between the twins.
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
TRAILING = {"Preview3D": [""], "SaveGLB": [""]}


def _inputs_in_order(spec: dict):
    for section in ("required", "optional"):
        entries = spec["input"].get(section, {})
        for name in spec.get("input_order", {}).get(section, list(entries)):
            entry = entries[name]
            yield name, entry[0], (entry[1] if len(entry) > 1 else {}), section == "optional"


def _widget(kind, opts) -> bool:
    return isinstance(kind, list) or (kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") and not opts.get("forceInput"))


def ui_to_api(ui: dict, oi: dict) -> dict:
    links = {l[0]: l for l in ui["links"]}
    assert len(links) == len(ui["links"]), "duplicate link ids"
    nodes = {n["id"]: n for n in ui["nodes"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in MW.FRONTEND_ONLY:
            assert not node["inputs"] and not node["outputs"]
            continue
        spec = oi[node["type"]]
        linked = {}
        for slot, inp in enumerate(node["inputs"]):
            if inp.get("link") is None:
                continue
            link = links[inp["link"]]
            assert link[3] == node["id"] and link[4] == slot, f"link {link} does not end at node {node['id']} slot {slot}"
            src = nodes[link[1]]
            out = src["outputs"][link[2]]
            assert inp["link"] in out["links"], f"link {link[0]} missing from node {src['id']}'s output list"
            src_type = oi[src["type"]]["output"][link[2]]
            assert link[5] == out["type"] == src_type, f"link {link} type vs output {src_type}"
            assert inp["type"] in (src_type, "*"), f"node {node['id']}.{inp['name']} ({inp['type']}) fed {src_type}"
            linked[inp["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, opts, optional in _inputs_in_order(spec):
            if _widget(kind, opts):
                assert values, f"node {node['id']} ({node['type']}): no widget value left for {name}"
                value = values.pop(0)
                if kind == "INT" and (opts.get("control_after_generate") if "control_after_generate" in opts
                                      else name in ("seed", "noise_seed")):
                    assert values.pop(0) in SEED_CONTROLS, f"node {node['id']}: {name} lacks its control_after_generate value"
                if opts.get("image_upload"):
                    assert values.pop(0) == "image"
                inputs[name] = linked.pop(name) if name in linked else value
            elif name in linked:
                inputs[name] = linked.pop(name)
            else:
                assert optional, f"node {node['id']} ({node['type']}): required socket {name} unconnected"
        assert not linked, f"node {node['id']}: links to unknown inputs {sorted(linked)}"
        assert values == TRAILING.get(node["type"], []), f"node {node['id']} ({node['type']}): extra widget values {values}"
        title = node.get("title") or spec.get("display_name") or node["type"]
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    for out_node in ui["nodes"]:
        for slot, out in enumerate(out_node["outputs"]):
            for lid in out["links"] or []:
                assert links[lid][1] == out_node["id"] and links[lid][2] == slot
    assert ui["last_link_id"] == max(links, default=0) and ui["last_node_id"] == max(nodes)
    return api


# --------------------------------------------------------------------------- (a) no ComfyUI
def test_files_are_what_the_generator_writes():
    for fname, text in MW.render_all(SNAP).items():
        path = os.path.join(WF_DIR, fname)
        assert os.path.isfile(path), f"{fname} missing: run python scripts/make_workflows.py"
        with open(path, encoding="utf-8") as fh:
            assert fh.read() == text, f"{fname} is out of date: run python scripts/make_workflows.py"


def test_only_ui_workflows_sit_where_comfyui_lists_templates(tmp_path):
    """ComfyUI lists ``<pack>/workflows/*.json`` (not subfolders) in its template browser: only the UI files are
    there; the API twins and the snapshot live in workflows/api/. --check flags a stray file; writing removes the
    old layout's twins (``<name>_api.json``, ``_object_info.json``) and keeps anything else (flagged, exit 1)."""
    assert sorted(f for f in os.listdir(WF_DIR) if f.endswith(".json")) == sorted(f"{n}.json" for n in NAMES)
    assert sorted(os.listdir(os.path.join(WF_DIR, "api"))) == sorted(["_object_info.json"] + [f"{n}.json" for n in NAMES])
    assert MW.stray_templates() == []
    out = tmp_path / "wf"
    assert MW.main(["--out", str(out)]) == 0 and MW.main(["--out", str(out), "--check"]) == 0
    for old in ("full_api.json", "_object_info.json", "mine.json"):
        (out / old).write_text("{}")
    assert MW.stray_templates(str(out)) == ["_object_info.json", "full_api.json", "mine.json"]
    assert MW.main(["--out", str(out), "--check"]) == 1
    assert MW.main(["--out", str(out)]) == 1  # the user's own mine.json is left alone, but reported
    assert MW.stray_templates(str(out)) == ["mine.json"] and (out / "api" / "full.json").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_the_ui_file_exported(name):
    ui, api = load(f"{name}.json"), load(f"api/{name}.json")
    assert ui["version"] == 0.4 and {g["title"][:1] for g in ui["groups"]} >= {"1", "2"}
    assert ui_to_api(ui, SNAP) == api
    # every node sits inside its stage's group box (what the user sees)
    for node in ui["nodes"]:
        x, y = node["pos"]
        assert any(g["bounding"][0] <= x <= g["bounding"][0] + g["bounding"][2] and g["bounding"][1] <= y <= g["bounding"][1] + g["bounding"][3]
                   for g in ui["groups"]), f"{name}: node {node['id']} ({node['type']}) outside every group"


UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CNR_ID = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9._-]*[a-zA-Z0-9])?$")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_matches_the_frontend_schema(name):
    """The constraints of the frontend's zod schema for version-0.4 workflows (zComfyWorkflow in
    comfyui-frontend-package 1.27: zComfyNode, zComfyLink, zGroup, zProperties, zModelFile)."""
    ui = load(f"{name}.json")
    assert UUID.match(ui["id"]) and _num(ui["version"]) and _num(ui["last_link_id"]) and _num(ui["last_node_id"])
    assert _num(ui["extra"]["ds"]["scale"]) and len(ui["extra"]["ds"]["offset"]) == 2
    for n in ui["nodes"]:
        assert isinstance(n["id"], int) and isinstance(n["type"], str) and isinstance(n["flags"], dict)
        assert len(n["pos"]) == 2 and all(map(_num, n["pos"])) and len(n["size"]) == 2 and all(map(_num, n["size"]))
        assert _num(n["order"]) and n["mode"] == 0 and isinstance(n["widgets_values"], list)
        for i in n["inputs"]:
            assert isinstance(i["name"], str) and isinstance(i["type"], str) and (i["link"] is None or isinstance(i["link"], int))
        for o in n["outputs"]:
            assert isinstance(o["name"], str) and isinstance(o["type"], str) and isinstance(o["links"], list)
        props = n["properties"]
        assert "cnr_id" not in props or CNR_ID.match(props["cnr_id"])
        for m in props.get("models", []):
            assert set(m) == {"name", "url", "directory"} and m["url"].startswith("https://") and m["name"] in n["widgets_values"]
    for link in ui["links"]:
        assert len(link) == 6 and all(isinstance(v, int) for v in link[:5]) and isinstance(link[5], str)
    for g in ui["groups"]:
        assert isinstance(g["title"], str) and len(g["bounding"]) == 4 and all(map(_num, g["bounding"]))


def _defined_node_ids() -> set[str]:
    ids = set()
    for path in glob.glob(os.path.join(ROOT, "nodes", "*.py")):
        with open(path, encoding="utf-8") as fh:
            ids |= set(re.findall(r'node_id="([A-Za-z0-9_]+)"', fh.read()))
    return ids


def test_node_types_are_core_or_ours():
    ours = _defined_node_ids()
    for name in NAMES:
        for node in load(f"{name}.json")["nodes"]:
            t = node["type"]
            if t in MW.FRONTEND_ONLY:
                continue
            assert t in SNAP, f"{name}: {t} not in workflows/api/_object_info.json"
            module = SNAP[t].get("python_module", "")
            if t.startswith("IDSculpt"):
                assert t in ours, f"{name}: {t} is not defined in nodes/*.py"
                assert module.startswith("custom_nodes."), module
            else:
                assert module == "nodes" or module.startswith("comfy_extras."), f"{name}: {t} is not a core node ({module})"


def _strings(api: dict) -> dict:
    """Evaluate the caption -> StringConcatenate chains: node id -> its STRING output."""
    memo: dict = {}

    def value(v):
        return ev(v[0]) if isinstance(v, list) else v

    def ev(nid):
        if nid not in memo:
            n = api[nid]
            if n["class_type"] == "PrimitiveStringMultiline":
                memo[nid] = n["inputs"]["value"]
            elif n["class_type"] == "StringConcatenate":
                i = n["inputs"]
                memo[nid] = value(i["string_a"]) + i["delimiter"] + value(i["string_b"])
            else:
                raise AssertionError(f"unexpected string source {n['class_type']}")
        return memo[nid]

    return {nid: value(n["inputs"]["text"]) for nid, n in api.items() if n["class_type"] == "CLIPTextEncode"}, ev


def _feeds(api: dict, nid: str) -> list[tuple[str, str]]:
    """(consumer id, input name) of every link leaving node ``nid``."""
    return [(k, name) for k, n in api.items() for name, v in n["inputs"].items() if isinstance(v, list) and v[0] == nid]


def _one(api: dict, cls: str, title: str | None = None) -> tuple[str, dict]:
    hits = [(k, n) for k, n in api.items() if n["class_type"] == cls and (title is None or title in n["_meta"]["title"])]
    assert len(hits) == 1, f"expected one {cls} {title or ''}, found {len(hits)}"
    return hits[0]


def _assert_view_prompts(texts: dict, inputs: dict, prompt: str) -> None:
    """The authors' view-dependent prompting: "<prompt>, <d> view" for every direction; back and overhead views
    REPLACE the negative (prompt_processors/base.py), front and side views keep the plain one (not wired)."""
    for d in ("front", "side", "back", "overhead"):
        assert texts[inputs[f"positive_{d}"][0]] == f"{prompt}, {d} view"
    assert texts[inputs["negative_back"][0]] == "face, nose, eyes, mouth, front face, facial"
    assert texts[inputs["negative_overhead"][0]] == "face, nose, eyes, mouth, front face, facial, overexposure, Warm light"
    assert "negative_front" not in inputs and "negative_side" not in inputs


@pytest.mark.comfy
def test_authors_texture_negative_reaches_clip_as_plain_text(comfy_inprocess):
    """Their diffusers encoder has no weight syntax: ComfyUI's parser (escape, split by weight, unescape, as
    SDTokenizer.tokenize_with_weights does) must give the authors' literal text, all at weight 1."""
    from comfy.sd1_clip import escape_important, token_weights, unescape_important

    parsed = token_weights(escape_important(MW.AUTHORS_TEXTURE_NEGATIVE), 1.0)
    assert [w for _, w in parsed] == [1.0] * len(parsed)
    text = "".join(unescape_important(t) for t, _ in parsed)
    assert text.startswith("(face painting, artifact") and "anime:1.4), worst quality" in text


@pytest.mark.parametrize("name", NAMES)
def test_settings_follow_the_reference(name):
    """docs/FIDELITY.md, the rows that live in the workflows: reference maps (canny ControlNet, 30 steps, CFG 7.5,
    ID 0.5 / 0.1, "head only" prompts, IP-Adapter's default negative), ISD (CFG 50, t in [20, 500], ID only below
    70 deg, landmark ControlNet, the authors' estimator on a posterior sample of sd-vae-ft-mse, view-dependent
    prompts and negatives), the step schedule of core/schedules.py (full_paper: the paper's 6000/1000 DMTet steps,
    one ISD view per step, 400 refinement steps; the others the fast default), texture in the sculpt's normalised frame with 20 DDIM steps CFG 10
    from t=950, normalbae + ID always on, the authors' prompt/negative per direction, RealESRGAN deblur, 400
    refinement steps with LPIPS-VGG against the whole-head mask."""
    api = load(f"api/{name}.json")
    texts, _ = _strings(api)
    caption = _one(api, "PrimitiveStringMultiline")[1]["inputs"]["value"]
    for kind, ckpt, weight in (("normal", MW.NORMAL_SD15, 0.5), ("depth", MW.DEPTH_SD15, 0.1)):
        kid, ks = _one(api, "KSampler", kind)
        assert (ks["inputs"]["steps"], ks["inputs"]["cfg"]) == (30, 7.5)
        adapter = api[ks["inputs"]["model"][0]]
        assert adapter["class_type"] == "IDSculptApplyIDAdapter" and adapter["inputs"]["weight"] == weight
        assert api[adapter["inputs"]["model"][0]]["inputs"]["ckpt_name"] == ckpt
        ctl = api[ks["inputs"]["positive"][0]]
        assert ctl["class_type"] == "ControlNetApplyAdvanced" and ks["inputs"]["negative"] == [ks["inputs"]["positive"][0], 1]
        assert api[ctl["inputs"]["control_net"][0]]["inputs"]["control_net_name"] == MW.CN_CANNY
        assert api[ctl["inputs"]["image"][0]]["class_type"] == "Canny"
        assert texts[ctl["inputs"]["positive"][0]] == f"{caption}, black background, {kind} map, head only"
        assert texts[ctl["inputs"]["negative"][0]] == "monochrome, lowres, bad anatomy, worst quality, low quality"
    isd_id, isd = _one(api, "IDSculptISDGuidance")
    i = isd["inputs"]
    assert (i["cfg"], i["t_min"], i["t_max"], i["id_azimuth_limit"]) == (50.0, 20, 500, 70.0)
    assert api[i["control_net"][0]]["inputs"]["control_net_name"] == MW.CN_FACE
    assert api[i["landmarks"][0]]["class_type"] == "IDSculptLandmarkRender"
    assert api[i["model"][0]]["inputs"]["weight"] == 1.0
    assert api[api[i["model"][0]]["inputs"]["model"][0]]["inputs"]["ckpt_name"] == MW.NORMAL_SD15
    assert (i["estimator"], i["vae_posterior"]) == ("authors", "sample")
    assert api[i["vae"][0]]["inputs"]["vae_name"] == MW.VAE_FT_MSE
    isd_prompt = f"a DSLR portrait of {caption}, black background, normal map"
    assert texts[i["positive"][0]] == isd_prompt and texts[i["negative"][0]] == ""
    _assert_view_prompts(texts, i, isd_prompt)
    sid, sculpt = _one(api, "IDSculptDMTetSculpt")
    sched = MW.SCHEDULES.PAPER if name == "full_paper" else MW.SCHEDULES.FAST
    assert (sculpt["inputs"]["steps"], sculpt["inputs"]["gan_steps"]) == (sched.sculpt_steps, sched.gan_steps)
    assert (sculpt["inputs"]["guidance_views"], sculpt["inputs"]["lr"]) == (sched.guidance_views, sched.sculpt_lr)
    if name == "full_paper":
        assert (sculpt["inputs"]["steps"], sculpt["inputs"]["gan_steps"], sculpt["inputs"]["guidance_views"]) == (6000, 1000, 1)
    assert sculpt["inputs"]["guidance"] == [isd_id, 0]
    assert api[sculpt["inputs"]["reference_geometry"][0]]["class_type"] == "IDSculptGeoSupervision"
    invert_id = sculpt["inputs"]["head_mesh"][0]
    stage1 = "IDSculptPlaceHeadMesh" if name == "full_from_mesh" else "IDSculptPanoHeadInvert"
    assert api[invert_id]["class_type"] == stage1 and sculpt["inputs"]["gan_views"] == [invert_id, 3]
    if stage1 == "IDSculptPanoHeadInvert":
        assert (api[invert_id]["inputs"]["w_steps"], api[invert_id]["inputs"]["pti_steps"]) == (sched.w_steps, sched.pti_steps)
    for _, save in (kv for kv in api.items() if kv[1]["class_type"] == "IDSculptSaveHead"):
        assert save["inputs"]["reference_camera"] == [sid, 2]  # kept in the GLB for evaluation in the head's frame
    consumers = {api[k]["class_type"] for k, _ in _feeds(api, sid)}
    assert "IDSculptSaveHead" in consumers and "PreviewImage" in consumers  # GLB + the 8 views, shown not saved
    assert "SaveImage" not in {n["class_type"] for n in api.values()}  # a run's files: the GLBs (run_pipeline adds turntables)
    src = api[invert_id]["inputs"]["portrait"][0]
    if name == "full_multiphoto":  # the photos' batch, Portrait first (the reference: ID Embed's reference_index 0)
        assert api[src]["class_type"] == "ImageBatch" and _one(api, "IDSculptIDEmbed")[1]["inputs"]["image"] == [src, 0]
        assert _one(api, "IDSculptIDEmbed")[1]["inputs"]["reference_index"] == 0
        while api[src]["class_type"] == "ImageBatch":
            src = api[src]["inputs"]["image1"][0]
        assert api[src]["_meta"]["title"] == "Portrait"
    assert api[src]["class_type"] == "LoadImage"
    if name == "geometry":
        assert not any(n["class_type"].startswith("IDSculptTexture") for n in api.values())
        return
    pid, inpaint = _one(api, "IDSculptProgressiveInpaint")
    rid, refine = _one(api, "IDSculptTextureRefine")
    assert (inpaint["inputs"]["steps"], inpaint["inputs"]["cfg"], inpaint["inputs"]["denoise"]) == (20, 10.0, 0.95)
    assert (inpaint["inputs"]["sampler_name"], refine["inputs"]["refine_steps"]) == ("ddim", sched.refine_steps)
    assert name != "full_paper" or refine["inputs"]["refine_steps"] == 400
    assert refine["inputs"]["denoise_batch"] == sched.denoise_batch
    assert name != "full_paper" or refine["inputs"]["denoise_batch"] == 1  # the authors' one sampler run per view
    assert refine["inputs"]["steps"] == sched.refine_sampler_steps  # DDIM steps per SDEdit target
    assert name != "full_paper" or refine["inputs"]["steps"] == 20  # the authors' diffusion_steps
    assert inpaint["inputs"]["head"] == [sid, 0] and refine["inputs"]["head"] == [pid, 0]
    assert api[inpaint["inputs"]["upscale_model"][0]]["inputs"]["model_name"] == MW.REALESRGAN_X2
    assert (refine["inputs"]["perceptual_model"], refine["inputs"]["lpips_weights"]) == (MW.VGG16, "auto")
    gid = api[sid]["inputs"]["reference_geometry"][0]
    subject = f"a DSLR portrait of {caption}"
    positive = {"full": subject, "full_paper": subject, "full_multiphoto": subject, "full_from_mesh": subject,
                "full_stylised": f"{subject}, {MW.TEXTURE_STYLE_PAINTERLY}"}[name]
    negative = {"full": MW.AUTHORS_TEXTURE_NEGATIVE, "full_paper": MW.AUTHORS_TEXTURE_NEGATIVE, "full_multiphoto": MW.AUTHORS_TEXTURE_NEGATIVE,
                "full_from_mesh": MW.AUTHORS_TEXTURE_NEGATIVE, "full_stylised": MW.STYLISED_NEGATIVE}[name]
    for node in (inpaint, refine):
        inp = node["inputs"]
        assert api[inp["control_net"][0]]["inputs"]["control_net_name"] == MW.CN_NORMALBAE
        adapter = api[inp["model"][0]]
        assert adapter["class_type"] == "IDSculptApplyIDAdapter" and adapter["inputs"]["weight"] == 1.0
        assert inp["reference_image"] == [invert_id, 2]
        # the sculpt's normalised frame: its head and its reference camera (output 2), never PanoHead's camera
        assert inp["reference_camera"] == [sid, 2]
        assert inp["reference_mask"] == [gid, 3]  # the whole-head mask (Geo Supervision's head_mask)
        assert api[inp["vae"][0]]["inputs"]["vae_name"] == MW.VAE_FT_MSE
        assert texts[inp["positive"][0]] == positive and texts[inp["negative"][0]] == negative
        _assert_view_prompts(texts, inp, positive)
    ckpt = api[api[inpaint["inputs"]["model"][0]]["inputs"]["model"][0]]["inputs"]["ckpt_name"]
    assert ckpt == {"full": MW.TEXTURE_SD15, "full_paper": MW.TEXTURE_SD15, "full_multiphoto": MW.TEXTURE_SD15, "full_from_mesh": MW.TEXTURE_SD15,
                    "full_stylised": MW.STYLISED_SD15}[name]
    assert "IDSculptSaveHead" in {api[k]["class_type"] for k, inp in _feeds(api, rid) if api[k]["inputs"][inp] == [rid, 0]}


LOADER_FOLDERS = {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints", ("ControlNetLoader", "control_net_name"): "controlnet",
                  ("IDSculptIDAdapterLoader", "adapter_name"): "ipadapter", ("IDSculptPanoHeadLoader", "checkpoint"): "idsculpt",
                  ("IDSculptPanoHeadLoader", "vgg16"): "idsculpt", ("IDSculptTextureRefine", "perceptual_model"): "idsculpt",
                  ("VAELoader", "vae_name"): "vae", ("UpscaleModelLoader", "model_name"): "upscale_models"}


def referenced_files(api: dict) -> list[tuple[str, str, str, str]]:
    """(node id, input, folder, file name) of every model file the prompt loads."""
    out = []
    for nid, n in api.items():
        for name, value in n["inputs"].items():
            folder = LOADER_FOLDERS.get((n["class_type"], name))
            if folder and isinstance(value, str) and value not in ("none", "none (template head)", "auto"):
                out.append((nid, name, folder, value))
    return out


def test_model_names_are_in_the_model_table():
    seen = set()
    for name in NAMES:
        for _nid, _inp, folder, fname in referenced_files(load(f"api/{name}.json")):
            seen.add(fname)
            if fname == MW.STYLISED_SD15:  # any SD1.5 checkpoint works for texture; the table names Realistic Vision only
                assert folder == "checkpoints"
                continue
            spec = M.lookup_spec(fname)
            assert spec is not None, f"{fname} is not a name core/models.py accepts"
            assert any(f == folder and fnmatch.fnmatch(fname.lower(), p.lower().rsplit("/", 1)[-1]) for f, p in spec.locations), \
                f"{fname} ({spec.key}) is not accepted in models/{folder}: {spec.accepted_names()}"
    assert {MW.NORMAL_SD15, MW.DEPTH_SD15, MW.CN_CANNY, MW.CN_FACE, MW.CN_NORMALBAE, MW.ID_ADAPTER, MW.VGG16, MW.VAE_FT_MSE,
            MW.REALESRGAN_X2} <= seen  # PanoHead and its VGG16 come through the loader's `auto` (template head without them)


def test_quick_test_patch_keeps_the_graph():
    api = load("api/full.json")
    quick = MW.quick_test_prompt(api, template=True)
    assert api == load("api/full.json"), "the original must not change"
    for nid, node in api.items():
        for name, v in node["inputs"].items():
            if isinstance(v, list):
                assert quick[nid]["inputs"][name] == v  # links untouched
    _, sculpt = _one(quick, "IDSculptDMTetSculpt")
    assert (sculpt["inputs"]["steps"], sculpt["inputs"]["grid_resolution"]) == (4, 32)
    _, loader = _one(quick, "IDSculptPanoHeadLoader")
    assert loader["inputs"]["checkpoint"] == "none (template head)" and _one(quick, "IDSculptPanoHeadInvert")[1]["inputs"]["init"] == "template"
    assert all(n["inputs"]["steps"] == 2 for n in quick.values() if n["class_type"] == "KSampler")
    with pytest.raises(ValueError, match="is a link"):
        MW.patch_inputs(copy.deepcopy(api), {"IDSculptDMTetSculpt": {"head_mesh": 1}})
    edits = MW.patch_inputs(copy.deepcopy(api), {"IDSculptDMTetSculpt": {"steps": 10}})
    assert edits == [f"{_one(api, 'IDSculptDMTetSculpt')[0]}.steps=10"]


# --------------------------------------------------------------------------- (b) with ComfyUI
def _models_cache() -> str:
    base = os.environ.get("IDSCULPT_TEST_MODELS_DIR") or os.path.join(ROOT, "tests", "output", "test_models")
    return os.path.join(base, "small")


BUILDER_KEYS = ("normal_sd15", "depth_sd15", "texture_sd15", "controlnet_canny", "controlnet_normalbae", "controlnet_mediapipe_face",
                "id_adapter", "insightface", "panohead", "vgg16", "vae_ft_mse", "realesrgan_x2")


def _panohead_seed_offset() -> int:
    from build_test_models import SEED_OFFSET  # tests/ is on sys.path (conftest)

    return SEED_OFFSET["panohead"]


def _builder_file(cache: str, folder: str, fname: str) -> str:
    """The builder's file for a workflow file name: the same table entry's canonical file (the stylised
    texture checkpoint, which the table does not name, gets the texture stand-in)."""
    spec = M.lookup_spec(fname)
    key = spec.key if spec is not None else ("texture_sd15" if folder == "checkpoints" else None)
    assert key is not None, fname
    spec = M.get_spec(key)
    path = os.path.join(cache, spec.folder, *spec.filename.split("/"))
    assert os.path.isfile(path), f"builder output {path} missing"
    return path


def _place(src: str, dst: str, convert_dir: str) -> None:
    """Link the builder's file under the workflow's name; a .pth name gets a real torch pickle of the
    same state dict (ComfyUI picks the reader by extension)."""
    if os.path.lexists(dst):
        return
    if os.path.splitext(src)[1] != os.path.splitext(dst)[1]:
        if not dst.endswith((".pth", ".pt", ".bin", ".ckpt")) or not src.endswith(".safetensors"):
            raise AssertionError(f"cannot convert {src} to {dst}")
        import torch
        from safetensors.torch import load_file

        cached = os.path.join(convert_dir, os.path.basename(dst))
        if not os.path.isfile(cached) or os.path.getmtime(cached) < os.path.getmtime(src):
            os.makedirs(convert_dir, exist_ok=True)
            torch.save(load_file(src), cached + ".part")
            os.replace(cached + ".part", cached)
        src = cached
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.symlink(src, dst)


PANOHEAD_E2E = "e2e-panohead-standin-seed4.pkl"
#: full_multiphoto's extra LoadImage files -> (photo of the same person as PORTRAIT, mirrored?): the set has two
#: photos of her, so the third is the first one mirrored (another view of the same face)
MULTIPHOTO_INPUTS = {"portrait_2.jpg": (os.path.join(os.path.dirname(PORTRAIT), "jolie_2.jpg"), False),
                     "portrait_3.jpg": (PORTRAIT, True)}


def _head_glb(path: str) -> None:
    """The template head as a GLB in another scale and place, turned a few degrees (full_from_mesh's input)."""
    import math

    import torch

    from idsculpt.core.panohead.template import template_mesh

    m = template_mesh(96)
    a = math.radians(8.0)
    rot = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    m.with_(vertices=m.vertices @ rot.T * 23.0 + torch.tensor([4.0, 30.0, -7.0])).save(path)


@pytest.fixture(scope="module")
def workflow_models(comfy_server, comfy_path, comfy_python):
    """Random-weight stand-ins (small SD1.5-detectable size, the builder's cache) under every file name the
    workflows use, in the server's model folders, and the portrait in its input folder."""
    cache = _models_cache()
    r = subprocess.run([comfy_python, BUILDER, "--models-dir", cache, "--size", "small", "--comfyui", comfy_path,
                        "--only", ",".join(BUILDER_KEYS)], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sb = comfy_server.sandbox
    convert_dir = os.path.join(ROOT, "tests", "output", "workflow_models")
    # the server is shared by every comfy test of the session: remember what was there, remove what we add
    touched = [sb.model_dir(f) for f in sorted(set(LOADER_FOLDERS.values()) | {"insightface"})]
    touched += [os.path.join(sb.model_dir("insightface"), "models"), sb.input_dir]
    before = {d: set(os.listdir(d)) if os.path.isdir(d) else set() for d in touched}
    # PanoHead: the builder's stand-in at seed offset 900 has negative density everywhere (no surface even at
    # level 0); tiny_generator(seed=4), the stand-in tests/test_panohead_nodes.py inverts and meshes at level 0,
    # has one: build that one (builder seed = 4 - 900) for the end-to-end run
    pano_dir = os.path.join(convert_dir, "panohead_seed4")
    r = subprocess.run([comfy_python, BUILDER, "--models-dir", pano_dir, "--size", "small", "--comfyui", comfy_path,
                        "--only", "panohead", f"--seed={4 - _panohead_seed_offset()}"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in NAMES:
        for _nid, _inp, folder, fname in referenced_files(load(f"api/{name}.json")):
            src = _builder_file(pano_dir if fname == MW.PANOHEAD else cache, folder, fname)
            _place(src, os.path.join(sb.model_dir(folder), fname), convert_dir)
    # ... and under a name of its own, which the PanoHead run selects: another test of the session may
    # already have placed a different stand-in under the release's name (that one is left alone)
    _place(_builder_file(pano_dir, "idsculpt", MW.PANOHEAD), os.path.join(sb.model_dir("idsculpt"), PANOHEAD_E2E), convert_dir)
    face_dir = os.path.join(sb.model_dir("insightface"), "models", MW.INSIGHTFACE)
    if not os.path.lexists(face_dir):
        os.makedirs(os.path.dirname(face_dir), exist_ok=True)
        os.symlink(os.path.join(cache, "insightface", "models", MW.INSIGHTFACE), face_dir)
    shutil.copyfile(PORTRAIT, os.path.join(sb.input_dir, MW.PORTRAIT))
    for fname, (src, mirror) in MULTIPHOTO_INPUTS.items():  # the several-photo workflow's photos 2 and 3
        import cv2

        img = cv2.imread(src)
        cv2.imwrite(os.path.join(sb.input_dir, fname), img[:, ::-1] if mirror else img)
    _head_glb(os.path.join(sb.input_dir, HEAD_GLB))
    yield {"cache": cache}
    for d, names in before.items():  # links, the portrait, PanoHead's converted files beside its .pkl
        for name in set(os.listdir(d)) - names if os.path.isdir(d) else ():
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)


@pytest.mark.comfy
def test_ui_node_types_exist_in_live_comfyui(comfy_server):
    live = comfy_server.object_info()
    for name in NAMES:
        unknown = sorted({n["type"] for n in load(f"{name}.json")["nodes"]} - set(live) - MW.FRONTEND_ONLY)
        assert not unknown, f"{name}.json uses node types this ComfyUI does not know: {unknown}"


@pytest.mark.comfy
def test_template_list_is_exactly_the_ui_workflows(comfy_server):
    """The server's template browser (GET /workflow_templates: custom node folder -> workflow names) shows the
    three UI workflows of the pack, no API twin and no snapshot."""
    listed = comfy_server._get("/workflow_templates")
    assert sorted(listed.get(ch.PACK_NAME, [])) == sorted(NAMES), listed


@pytest.mark.comfy
def test_workflows_current_with_live_node_definitions(comfy_server):
    """Regenerating from the live /object_info gives the files on disk: the snapshot is not stale in any way
    that matters (input order, widget kinds, outputs, COMBO options of the values used)."""
    live = comfy_server.object_info()
    oi = {t: MW.snapshot_entry(live[t]) for t in MW.needed_types()}
    for fname, text in MW.render_all(oi).items():
        with open(os.path.join(WF_DIR, fname), encoding="utf-8") as fh:
            assert fh.read() == text, f"{fname} differs when generated from the live ComfyUI: run " \
                                      "python scripts/make_workflows.py --refresh-object-info"


@pytest.mark.comfy
@pytest.mark.slow
def test_api_twins_pass_prompt_validation(comfy_server, workflow_models):
    """POST /prompt validates each twin (links, types, values, model files) while a harness loop holds the
    queue; the validated prompts are then deleted from the queue, so none runs."""
    blocker = comfy_server.queue({"1": {"class_type": "HarnessProgressLoop", "inputs": {"steps": 100000, "seconds_per_step": 0.01}}})
    queued = []
    try:
        deadline = time.monotonic() + 60
        while blocker not in comfy_server.running():
            assert time.monotonic() < deadline, "the blocking loop never started"
            time.sleep(0.05)
        for name in NAMES:
            status, resp = comfy_server._request("POST", "/prompt", {"prompt": load(f"api/{name}.json"), "client_id": comfy_server.client_id})
            assert status == 200 and not resp.get("node_errors"), f"api/{name}.json refused: {json.dumps(resp)[:3000]}"
            queued.append(resp["prompt_id"])
        # the same validation refuses a wrong link type and a missing model file (so the check above is live)
        api = load("api/geometry.json")
        sid, sculpt = _one(api, "IDSculptDMTetSculpt")
        sculpt["inputs"]["reference_geometry"] = list(sculpt["inputs"]["head_mesh"])
        cid, ckpt = _one(api, "CheckpointLoaderSimple", "Depth")
        ckpt["inputs"]["ckpt_name"] = "not-there.safetensors"
        status, resp = comfy_server._request("POST", "/prompt", {"prompt": api, "client_id": comfy_server.client_id})
        if isinstance(resp, dict) and "prompt_id" in resp:
            queued.append(resp["prompt_id"])
        # (ComfyUI still queues the outputs that do not depend on a broken node: node_errors is the verdict)
        assert {sid, cid} <= set(resp.get("node_errors", {})), resp
    finally:
        comfy_server._request("POST", "/queue", {"delete": queued})
        comfy_server.interrupt(blocker)
        try:
            comfy_server.wait(blocker, timeout=60)
        except ch.ComfyPromptError:
            pass  # interrupted, as intended
    pending = [item[1] for item in comfy_server._get("/queue").get("queue_pending", [])]
    assert not set(queued) & set(pending)
    for pid in queued:
        assert comfy_server.history(pid) is None, "a validated workflow ran"


# --------------------------------------------------------------------------- (c) end to end, lowered
@pytest.mark.comfy
@pytest.mark.slow
@pytest.mark.parametrize("template", [False, True], ids=["panohead", "template"])
def test_geometry_workflow_runs_to_a_glb(comfy_server, workflow_models, comfy_clean_output, template):
    from idsculpt.core.mesh import HeadMesh

    # the PanoHead stand-in has random weights: its density is no head and never reaches the real level (20),
    # so the random-weight run extracts the level-0 surface (as tests/test_panohead_nodes.py does)
    extra = None if template else {"IDSculptPanoHeadInvert": {"mesh_level": 0.0}, "IDSculptPanoHeadLoader": {"checkpoint": PANOHEAD_E2E}}
    api = MW.quick_test_prompt(load("api/geometry.json"), template=template, extra=extra)
    save_id = _one(api, "IDSculptSaveHead")[0]
    views_id = _one(api, "PreviewImage", MW.SCULPT_VIEWS_TITLE)[0]
    log_before = len(comfy_server.log())
    t0 = time.monotonic()
    hist = comfy_server.submit(api, timeout=900)
    elapsed = time.monotonic() - t0
    print(f"\ngeometry workflow ({'template' if template else 'panohead'}), lowered: {elapsed:.1f} s")
    run_log = comfy_server.log()[log_before:]
    assert "Traceback" not in run_log and "!!! Exception" not in run_log and " ERROR " not in run_log, run_log[-3000:]
    files = hist["outputs"][save_id]["3d"]
    glb = comfy_server.output_path(files[0])
    assert glb.endswith(".glb") and os.path.getsize(glb) > 0
    head = HeadMesh.load(glb)
    assert head.faces.shape[0] > 100 and bool(head.vertices.isfinite().all())
    ext = (head.vertices.max(0).values - head.vertices.min(0).values)
    assert bool((ext > 0).all())
    # a single closed surface around the origin
    import trimesh

    tm = trimesh.Trimesh(head.vertices.numpy(), head.faces.numpy(), process=False)
    assert tm.is_watertight and len(tm.split(only_watertight=False)) == 1
    assert tm.volume > 0
    # winding number of the origin (Van Oosterom–Strackee solid angles): 1 inside a closed outward surface
    a, b, c = (tm.vertices[tm.faces[:, k]] for k in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=1) for x in (a, b, c))
    num = np.einsum("ij,ij->i", a, np.cross(b, c))
    den = la * lb * lc + np.einsum("ij,ij->i", a, b) * lc + np.einsum("ij,ij->i", b, c) * la + np.einsum("ij,ij->i", c, a) * lb
    winding = float((2 * np.arctan2(num, den)).sum() / (4 * np.pi))
    if template:  # the random-weight PanoHead stand-in's level-0 surface is an arbitrary blob, not a head at the origin
        assert abs(winding - 1.0) < 1e-3, f"the head does not enclose the origin (winding number {winding:.3f})"
    views = hist["outputs"][views_id]["images"]
    assert len(views) == 8 and {v["type"] for v in views} == {"temp"}  # the sculpt's 8 views, shown but not saved
    saved = [f for _, _, fs in os.walk(comfy_clean_output) for f in fs]
    assert saved == [os.path.basename(glb)], saved  # one file per run: the GLB
    # which initialisation ran (PanoHead Invert logs its info line)
    want = "init=template" if template else "init=panohead"
    lines = [l for l in comfy_server.log().splitlines() if "IDSculpt PanoHead Invert:" in l]
    assert lines and want in lines[-1], lines[-1:] or comfy_server.log_tail()


@pytest.mark.comfy
@pytest.mark.slow
@pytest.mark.parametrize("name", ["full", "full_stylised"])
def test_full_workflow_runs_to_a_textured_glb(comfy_server, workflow_models, comfy_clean_output, name):
    """Both stages plus texture, lowered, with the template head: the textured GLB carries UVs and a texture."""
    from idsculpt.core.mesh import HeadMesh

    api = MW.quick_test_prompt(load(f"api/{name}.json"), template=True)
    final_id = _one(api, "IDSculptSaveHead", "Save textured")[0]
    t0 = time.monotonic()
    hist = comfy_server.submit(api, timeout=900)
    print(f"\n{name} workflow (template), lowered: {time.monotonic() - t0:.1f} s")
    head = HeadMesh.load(comfy_server.output_path(hist["outputs"][final_id]["3d"][0]))
    assert head.has_uv and head.texture is not None and head.texture.shape[0] == 512
    assert bool(head.texture.isfinite().all()) and float(head.texture.std()) > 0  # painted, not a flat fill
    geometry_id = _one(api, "IDSculptSaveHead", "untextured")[0]
    assert hist["outputs"][geometry_id]["3d"][0]["filename"].endswith(".glb")


@pytest.mark.comfy
@pytest.mark.slow
def test_full_multiphoto_workflow_runs_with_three_photos(comfy_server, workflow_models, comfy_clean_output):
    """The several-photo variant, lowered, template head: three photos through core Image Batch into ID Embed
    (every photo kept: the stand-in recogniser's embeddings are random, so the same-person check is switched off
    here; tests/test_multiphoto.py pins it) and PanoHead Invert (the reference photo), to a textured GLB."""
    from idsculpt.core.mesh import HeadMesh

    api = MW.quick_test_prompt(load("api/full_multiphoto.json"), template=True,
                               extra={"IDSculptIDEmbed": {"same_person_threshold": -1.0}})
    final_id = _one(api, "IDSculptSaveHead", "Save textured")[0]
    crops_id = _one(api, "PreviewImage", "ArcFace crop")[0]
    t0 = time.monotonic()
    hist = comfy_server.submit(api, timeout=900)
    print(f"\nfull_multiphoto workflow (template, 3 photos), lowered: {time.monotonic() - t0:.1f} s")
    assert len(hist["outputs"][crops_id]["images"]) == 3  # one ArcFace crop per photo: all three reached ID Embed
    head = HeadMesh.load(comfy_server.output_path(hist["outputs"][final_id]["3d"][0]))
    assert head.has_uv and head.texture is not None and bool(head.texture.isfinite().all())
    assert float(head.texture.std()) > 0
def test_full_workflow_from_a_head_mesh_glb(comfy_server, workflow_models, comfy_clean_output):
    """full_from_mesh, lowered: a GLB head (the template in another scale and pose) placed on the portrait by its face
    landmarks, sculpted and textured; Place Head Mesh reports the placement."""
    from idsculpt.core.mesh import HeadMesh

    api = MW.quick_test_prompt(load("api/full_from_mesh.json"), extra={"IDSculptPlaceHeadMesh": {"view_resolution": 32}})
    final_id = _one(api, "IDSculptSaveHead", "Save textured")[0]
    log_before = len(comfy_server.log())
    t0 = time.monotonic()
    hist = comfy_server.submit(api, timeout=900)
    print(f"\nfull_from_mesh workflow, lowered: {time.monotonic() - t0:.1f} s")
    head = HeadMesh.load(comfy_server.output_path(hist["outputs"][final_id]["3d"][0]))
    assert head.has_uv and head.texture is not None and bool(head.texture.isfinite().all())
    lines = [ln for ln in comfy_server.log()[log_before:].splitlines() if "IDSculpt Place Head Mesh:" in ln]
    assert lines and "init=mesh" in lines[-1], comfy_server.log_tail()
    px = float(re.search(r"reference view mean ([0-9.]+) px", lines[-1]).group(1))
    assert px < 12.0, lines[-1]  # the template's face on a real portrait: its proportions, not hers, are what is left
