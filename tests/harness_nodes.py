"""A test-only ComfyUI node pack that the harness installs beside ComfyUI-IDSculpt in its sandbox.

``HarnessProgressLoop`` drives the pack's own progress/interrupt adapter (nodes/common.py) inside a
real ComfyUI: a slow loop that reports progress with a live preview every step, so tests can check
that previews are accepted by the server's progress hook and that ``POST /interrupt`` stops a
running IDSculpt-style loop promptly. ``HarnessLiveObjects`` counts the live Python objects of
the pack's classes (and the tensors they could hold) so a test can check what survives a run and
``POST /free``. ``HarnessCudaCensus`` lists the live CUDA tensors and who holds them, so a GPU run can
say what stays allocated after ``/free``. Ids have no "IDSculpt" prefix: they are not part of the pack.
"""
import gc
import importlib
import json
import sys
import time
import warnings

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


def _holder(r, ignore: set):
    """(name, object) when ``r`` is a named holder: a module, or an object through its __dict__."""
    if isinstance(r, type(sys)):
        return f"module {r.__name__}", None
    if isinstance(r, dict):
        for h in gc.get_referrers(r):
            if id(h) in ignore:
                continue
            if isinstance(h, type(sys)) and h.__dict__ is r:
                return f"module {h.__name__}", None
            if getattr(h, "__dict__", None) is r:
                return f"{type(h).__module__}.{type(h).__qualname__}", h
        return None
    if isinstance(r, (list, tuple, set, frozenset)) or type(r).__name__ in ("frame", "cell"):
        return None
    return f"{type(r).__module__}.{type(r).__qualname__}", r


def _owner(obj, ignore: set, max_visits: int = 400) -> str:
    """What keeps ``obj`` alive: the chain of named holders up the referrer graph (innermost first),
    climbing through torch modules so a weight names the model that holds it, not its Conv2d."""
    chain: list = []
    seen = set(ignore) | {id(obj)}
    frontier = [obj]
    visits = 0
    while frontier and visits < max_visits and len(chain) < 4:
        nxt: list = []
        named = None
        seen.update((id(frontier), id(nxt)))
        for o in frontier:
            for r in gc.get_referrers(o):
                if id(r) in seen or type(r).__name__ == "frame":
                    continue
                seen.add(id(r))
                visits += 1
                h = _holder(r, seen)
                if h is None:
                    nxt.append(r)
                elif named is None:
                    named = h
            if named is not None:
                break
        if named is None:
            frontier = nxt[:50]
            continue
        name, holder = named
        if not chain or chain[-1] != name:
            chain.append(name)
        if holder is None:  # a module-level global: the root
            break
        seen.add(id(holder))
        frontier = [holder]
    return " <- ".join(chain) or "?"


class HarnessCudaCensus:
    """Output node: JSON with torch.cuda's counters and the live CUDA tensors grouped by holder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"nonce": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, nonce):
        gc.collect()
        out: dict = {"cuda": torch.cuda.is_available()}
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            out["allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            out["reserved_mib"] = round(torch.cuda.memory_reserved() / 2**20, 1)
            out["allocator"] = torch.cuda.get_allocator_backend()
        storages: dict = {}
        graphs = 0
        with warnings.catch_warnings():  # isinstance on deprecated torch.distributed names warns
            warnings.simplefilter("ignore")
            objects = gc.get_objects()
            cuda_objects = [o for o in objects if isinstance(o, (torch.Tensor, torch.cuda.CUDAGraph))]
            del objects
        for obj in cuda_objects:
            try:
                if isinstance(obj, torch.cuda.CUDAGraph):
                    graphs += 1
                    continue
                if not isinstance(obj, torch.Tensor) or not obj.is_cuda:
                    continue
                st = obj.untyped_storage()
                key = st.data_ptr()
            except Exception:  # noqa: BLE001 - odd objects (weak proxies, lazy tensors) are not counted
                continue
            if key not in storages or obj.numel() > storages[key][1].numel():
                storages[key] = (st.nbytes(), obj)
        groups: dict = {}
        ignore = {id(storages), id(groups), id(cuda_objects)} | {id(v) for v in storages.values()}
        for nbytes, t in storages.values():
            holder = _owner(t, ignore) if nbytes >= 2**20 else "(small tensors)"
            g = groups.setdefault(holder, {"mib": 0.0, "tensors": 0, "example": None})
            g["mib"] += nbytes / 2**20
            g["tensors"] += 1
            if g["example"] is None:
                g["example"] = f"{tuple(t.shape)} {t.dtype}"
        out["tensor_mib"] = round(sum(n for n, _ in storages.values()) / 2**20, 1)
        out["cuda_graphs_alive"] = graphs
        out["holders"] = sorted(({"holder": k, **{**v, "mib": round(v["mib"], 1)}} for k, v in groups.items()),
                                key=lambda g: -g["mib"])[:25]
        text = json.dumps(out)
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"HarnessProgressLoop": HarnessProgressLoop, "HarnessLiveObjects": HarnessLiveObjects,
                       "HarnessCudaCensus": HarnessCudaCensus}
