"""End to end: after the full (lowered) workflow and ``POST /free``, none of the pack's objects that
hold a run's tensors (predictors, CUDA-graph wrappers, meshes, guidance, landmarks, GAN views...) is
still alive in the server. On a GPU those hold CUDA memory; here (CPU) the check is on the objects.
Counted by the harness node HarnessLiveObjects (tests/harness_nodes.py) in the server process: once as
the last node of the run (the outputs are still cached: the count must see them), once after /free.
Before core.face.landmarks.import_mediapipe this failed: importing mediapipe inside PanoHead Invert kept
that node's frame -- its PanoHead model, head mesh, GAN views and cameras -- alive for good."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

import make_workflows as MW
from test_workflows import load, workflow_models  # noqa: F401  (fixture)

pytestmark = [pytest.mark.comfy, pytest.mark.slow]

#: classes whose instances are module-level or per-process by design (node classes, enums, configs' types)
HOLDERS = ("ComfyNoisePredictor", "ISDGuidance", "DiffusionGraphs", "GraphedCall", "HeadMesh", "FaceLandmarks3D",
           "GanViews", "ReferenceGeometry", "Sculptor", "ComfySampling", "PanoHeadModel", "Cameras")


def _live(server, nonce: int) -> dict:
    hist = server.submit({"1": {"class_type": "HarnessLiveObjects", "inputs": {"nonce": nonce}}}, timeout=120)
    return json.loads(hist["outputs"]["1"]["text"][0])


def _free(server) -> None:
    req = urllib.request.Request(server.url + "/free", data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=30).read()
    time.sleep(2)  # the prompt worker applies the flags on its next loop


def test_free_releases_every_run_object(comfy_server, workflow_models, comfy_clean_output):  # noqa: F811
    api = MW.quick_test_prompt(load("api/full.json"), template=True)
    save = next(k for k, v in api.items() if v["class_type"] == "IDSculptSaveHead" and "textured" in v["_meta"]["title"])
    api["9999"] = {"class_type": "HarnessLiveObjects", "inputs": {"nonce": 0, "after": [save, 0]}}
    hist = comfy_server.submit(api, timeout=900)
    during = json.loads(hist["outputs"]["9999"]["text"][0])
    print("\nat the end of the run:", {k: v for k, v in during.items() if k in HOLDERS})
    assert during.get("HeadMesh", 0) > 0  # the run's outputs are still cached then: the count sees them
    _free(comfy_server)
    after = _live(comfy_server, 2)
    print("after /free:", {k: v for k, v in after.items() if k in HOLDERS})
    left = {k: after[k] for k in HOLDERS if after.get(k, 0)}
    assert not left, f"still alive after /free: {left}"
