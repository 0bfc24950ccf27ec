"""Issue 19 through a real ComfyUI server (HTTP /prompt, as a user queues it): the shipped loader defaults
run the template head without PanoHead and PanoHead once its file is put in (no input edited), a 64-px
portrait is refused by PanoHead Invert with ID Embed's message, and a two-face portrait says which face
PanoHead Invert aligned and how to choose the other. Runs with the template head (the PanoHead inversion of
the stand-in through the loader's 'auto' is in test_panohead_nodes.py, in-process)."""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import comfy_harness as ch  # noqa: E402
from panohead_fixtures import dump_release_pickle, tiny_generator  # noqa: E402

pytestmark = [pytest.mark.comfy, pytest.mark.slow]  # ~25 s on 2 CPU cores (one server start is shared)


def _graph(image: str, face_index: int = 0) -> dict:
    return {
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "pl": {"class_type": "IDSculptPanoHeadLoader", "inputs": {"checkpoint": "auto", "vgg16": "auto", "lpips_weights": "auto"}},
        "inv": {"class_type": "IDSculptPanoHeadInvert", "inputs": {
            "portrait": ["img", 0], "panohead": ["pl", 0], "init": "auto", "w_steps": 2, "pti_steps": 1,
            "mesh_resolution": 64, "mesh_level": 20.0, "view_resolution": 32, "seed": 0, "face_index": face_index}},
        "info": {"class_type": "PreviewAny", "inputs": {"source": ["inv", 4]}},
    }


LOADER = {"pl": {"class_type": "IDSculptPanoHeadLoader", "inputs": {"checkpoint": "auto", "vgg16": "auto", "lpips_weights": "auto"}},
          "info": {"class_type": "PreviewAny", "inputs": {"source": ["pl", 1]}}}


def _info(hist: dict) -> str:
    return hist["outputs"]["info"]["text"][0]


def test_first_run_defaults_small_portrait_and_two_faces(comfy_server, portraits_dir, tmp_path):
    import cv2

    from idsculpt.core.models import find_model, get_spec

    inp = comfy_server.sandbox.input_dir
    for name in ("pichai_2.jpg", "two_faces.jpg"):
        shutil.copyfile(os.path.join(portraits_dir, name), os.path.join(inp, name))
    cv2.imwrite(os.path.join(inp, "small64.png"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    folder = comfy_server.sandbox.model_dir("idsculpt")
    # this server's models/idsculpt without any PanoHead file (another test may have left one: set aside, restored)
    aside = tmp_path / "aside"
    aside.mkdir()
    moved = []
    while True:
        path, _ = find_model(get_spec("panohead"), lambda f: [comfy_server.sandbox.model_dir(f)])
        if path is None:
            break
        moved.append((path, str(aside / f"{len(moved)}_{os.path.basename(path)}")))
        shutil.move(*moved[-1])
    release = os.path.join(folder, get_spec("panohead").filename)
    vgg = os.path.join(folder, "vgg16.safetensors")
    made = [p for p in (vgg,) if not os.path.exists(p)]
    try:
        # 1. no PanoHead: the defaults run the template head and say why
        info = _info(comfy_server.submit(_graph("pichai_2.jpg"), timeout=120))
        assert info.startswith("init=template") and "loader: checkpoint auto: no PanoHead file" in info

        # 2. a 64-px portrait: refused where it enters, in ID Embed's words
        with pytest.raises(ch.ComfyPromptError) as e:
            comfy_server.submit(_graph("small64.png"), timeout=120)
        msg = str(e.value)
        assert "(IDSculptPanoHeadInvert) failed: ValueError: portrait is too small: 64x64 px; face detection needs at least " \
               "128 px on the shorter side" in msg and "512x512" not in msg.split("Traceback")[0]

        # 3. two faces: which one, how many, how to choose; face_index 1 aligns the other one
        info0 = _info(comfy_server.submit(_graph("two_faces.jpg"), timeout=120))
        info1 = _info(comfy_server.submit(_graph("two_faces.jpg", face_index=1), timeout=120))
        assert "found 2 face(s)" in info0 and "using face #0 (the largest) of 2" in info0 and "Set face_index" in info0
        assert "using face #1 of 2" in info1

        # 4. PanoHead put in afterwards (a tiny stand-in under the release name): the same loader, no input edited,
        #    re-runs (its 'auto' fingerprint follows the files) and takes PanoHead. (Invert on it: test_panohead_nodes.)
        from safetensors.torch import save_file

        from idsculpt.core.panohead.perceptual import VGG16Perceptual
        from idsculpt.core.panohead.triplane import tiny_config

        assert _info(comfy_server.submit(LOADER, timeout=60)).startswith("checkpoint auto: no PanoHead file")
        made += [release, release[:-4] + ".safetensors", release[:-4] + ".json"]
        with open(release, "wb") as f:
            f.write(dump_release_pickle(tiny_generator(seed=4), tiny_config(), "raise RuntimeError('pickled code ran')\n"))
        if not os.path.exists(vgg):
            save_file({f"features.{k}": v.half() for k, v in VGG16Perceptual().features.state_dict().items()}, vgg)
        info = _info(comfy_server.submit(LOADER, timeout=60))
        # (another test of the session may have put the release's vgg16-397923af.pth there first: either file counts)
        assert info.startswith(f"checkpoint auto: PanoHead found ({release})") and "vgg16 auto: vgg16" in info
    finally:
        for p in made:
            if os.path.exists(p):
                os.remove(p)
        for src, dst in moved:
            shutil.move(dst, src)
