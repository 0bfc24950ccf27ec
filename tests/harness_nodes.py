"""A test-only ComfyUI node pack that the harness installs beside ComfyUI-IDSculpt in its sandbox.

``HarnessProgressLoop`` drives the pack's own progress/interrupt adapter (nodes/common.py) inside a
real ComfyUI: a slow loop that reports progress with a live preview every step, so tests can check
that previews are accepted by the server's progress hook and that ``POST /interrupt`` stops a
running IDSculpt-style loop promptly. ``HarnessLiveObjects`` counts the live Python objects of
the pack's classes (and the tensors they could hold) so a test can check what survives a run and
``POST /free``. Ids have no "IDSculpt" prefix: they are not part of the pack.
"""
import gc
import importlib
import json
import sys
import time

import torch


def _pack_common():
    """The pack's nodes/common.py as ComfyUI imported it (module names are paths there)."""
    for name, module in list(sys.modules.items()):
        if name.replace("\\", "/").rstrip("/").endswith("/ComfyUI-IDSculpt") and hasattr(module, "comfy_entrypoint"):
            return importlib.import_module(name + ".nodes.common")
    raise RuntimeError("ComfyUI-IDSculpt is not loaded")


class HarnessProgressLoop:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 10, "min": 1, "max": 100000}),
                             "seconds_per_step": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 10.0, "step": 0.001})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, steps, seconds_per_step):
        common = _pack_common()
        progress = common.ComfyProgress(steps, preview_size=64)
        done = 0
        for step in range(steps):
            progress.interrupt()
            time.sleep(seconds_per_step)
            done = step + 1
            progress.progress(done, steps, torch.full((1, 8, 8, 3), done / steps))
        return {"ui": {"text": [f"{done}/{steps}"]}, "result": (done,)}


class HarnessLiveObjects:
    """Output node: JSON {class name: live instances} for every class defined in the pack's modules."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nonce": ("INT", {"default": 0, "min": 0, "max": 1 << 30})},
                "optional": {"after": ("*", {"tooltip": "any output: makes this node run after that one"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types=None, **kw):
        return True  # "after" accepts any type

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, nonce, after=None):
        gc.collect()
        counts: dict = {}
        for obj in gc.get_objects():
            mod = getattr(type(obj), "__module__", None)
            if isinstance(mod, str) and "ComfyUI-IDSculpt" in mod.replace(chr(92), "/"):
                name = type(obj).__qualname__
                counts[name] = counts.get(name, 0) + 1
        text = json.dumps(counts, sort_keys=True)
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"HarnessProgressLoop": HarnessProgressLoop, "HarnessLiveObjects": HarnessLiveObjects}
