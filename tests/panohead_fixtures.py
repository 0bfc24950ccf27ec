"""Shared builders for the PanoHead tests: tiny generator, planted analytic density, release-format pickle; the
autograd node names of a result (which backward an op routes through)."""
from __future__ import annotations

import copy
import copyreg
import io
import pickle
import sys
import types
from contextlib import contextmanager

import torch

from idsculpt.core.panohead.triplane import TriPlaneGenerator, tiny_config

ELLIPSOID = (0.26, 0.34, 0.30)  # semi-axes (x, y, z) of the planted head-sized ellipsoid, world units
SIGMA_SCALE = 100.0  # planted sigma = 100 (1 - q) - 10 inside the box, q = sum (x_i / a_i)^2


def tiny_generator(seed: int = 0, **kw) -> TriPlaneGenerator:
    g = stand_in_generator(tiny_config(**kw), seed)
    g.neural_rendering_resolution = 32
    return g


def stand_in_generator(config: dict, seed: int = 0) -> TriPlaneGenerator:
    """A random-weight generator of ``config`` made usable as a stand-in (any size, e.g. release_config())."""
    torch.manual_seed(seed)
    g = TriPlaneGenerator(**config)
    with torch.no_grad():  # non-zero noise strengths so the const-noise path matters
        for n, p in g.named_parameters():
            if n.endswith("noise_strength"):
                p.fill_(0.1)
        # a trained t_mapping moves the camera by millimetres (PanoHead regularises it); random weights
        # would throw the camera off the head
        last = getattr(g.t_mapping, f"fc{g.t_mapping.num_layers - 1}")
        last.weight.mul_(0.02)
        last.bias.zero_()
    return g.eval()


def plant_ellipsoid(g: TriPlaneGenerator, axes=ELLIPSOID) -> torch.Tensor:
    """Set the OSG decoder and return tri-grid planes whose density is known in closed form.

    Plane features (channel 0, every depth slice) hold half-quadratics so that the decoder's mean
    over the three planes is (1 - q) / 3; the decoder maps it linearly (softplus kept in its linear
    range) to sigma = 100 (1 - q) - 10. Zero features (outside the box) give sigma = -10: empty."""
    rk = g.rendering_kwargs
    s, depth, box = rk["triplane_size"], rk.get("triplane_depth", 1), float(rk["box_warp"])
    a, b, c = axes
    u = ((torch.arange(s) + 0.5) / s * 2 - 1) * box / 2  # world coordinate of pixel centres
    H, W = torch.meshgrid(u, u, indexing="ij")
    f0 = 1 / 3 - (W ** 2 / a ** 2 + H ** 2 / b ** 2) / 2  # plane xy: W=x, H=y
    f1 = 1 / 3 - (W ** 2 / a ** 2 + H ** 2 / c ** 2) / 2  # plane xz: W=x, H=z
    f2 = 1 / 3 - (W ** 2 / b ** 2 + H ** 2 / c ** 2) / 2  # plane (y,z): W=y, H=z
    planes = torch.zeros(1, 3, 32, depth, s, s)
    for p, f in enumerate((f0, f1, f2)):
        planes[0, p, 0] = f[None].expand(depth, -1, -1)
    fc1, fc2 = g.decoder.net[0], g.decoder.net[2]
    with torch.no_grad():
        fc1.weight.zero_(); fc1.bias.zero_(); fc2.weight.zero_(); fc2.bias.zero_()
        fc1.weight[0, 0] = 3 * SIGMA_SCALE / fc1.weight_gain  # hidden0 = 300 mean + 40 = 100 (1 - q) + 40
        fc1.bias[0] = 40.0 / fc1.bias_gain
        fc2.weight[0, 0] = 1.0 / fc2.weight_gain  # sigma = hidden0 - 50
        fc2.bias[0] = -50.0 / fc2.bias_gain
    return planes.reshape(1, 3, 32 * depth, s, s)


# ------------------------------------------------------------------ release-format pickle
class _EasyDict(dict):
    pass


class _RaySamplerStub:  # stands for training.volumetric_rendering.ray_sampler.RaySampler
    pass


_RELEASE_NAMES = {"StyleGAN2Backbone": "Generator"}


@contextmanager
def fake_release_modules(module_src: str):
    """Install stand-ins of ``torch_utils.persistence`` / ``dnnlib.util`` / the ray sampler module
    whose reconstruct function behaves like the real one: it EXECUTES the stored module source."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        module = types.ModuleType("_imported_module_test")
        exec(meta["module_src"], module.__dict__)  # what the real loader does; ours must never get here
        obj = module.__dict__[meta["class_name"]].__new__(module.__dict__[meta["class_name"]])
        obj.__dict__.update(meta["state"])
        return obj

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    dnnlib_util = types.ModuleType("dnnlib.util")
    _EasyDict.__module__ = "dnnlib.util"
    _EasyDict.__qualname__ = "EasyDict"
    dnnlib_util.EasyDict = _EasyDict
    dnnlib.util = dnnlib_util
    rs_mod = types.ModuleType("training.volumetric_rendering.ray_sampler")
    _RaySamplerStub.__module__ = rs_mod.__name__
    _RaySamplerStub.__qualname__ = "RaySampler"
    rs_mod.RaySampler = _RaySamplerStub
    mods = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": dnnlib_util,
            "training": types.ModuleType("training"), "training.volumetric_rendering": types.ModuleType("training.volumetric_rendering"),
            "training.volumetric_rendering.ray_sampler": rs_mod}
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def dump_release_pickle(g: TriPlaneGenerator, config: dict, module_src: str) -> bytes:
    """Pickle ``{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'}`` the way PanoHead's
    training loop does: every network module as ``_reconstruct_persistent_obj(meta)`` carrying
    ``module_src`` (here: hostile code), its state dict-of-attributes, init args and kwargs."""
    from idsculpt.core.panohead.triplane import RaySampler

    with fake_release_modules(module_src):
        persistence = sys.modules["torch_utils.persistence"]

        def to_easy(x):
            if isinstance(x, dict):
                return _EasyDict({k: to_easy(v) for k, v in x.items()})
            return x

        class ReleasePickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, RaySampler):  # not persistent in the release: a plain class reference
                    return (copyreg._reconstructor, (_RaySamplerStub, object, None), dict(obj.__dict__))
                if isinstance(obj, torch.nn.Module) and type(obj).__module__.startswith("idsculpt."):
                    state = dict(obj.__dict__)
                    state["_init_args"] = ()
                    state["_init_kwargs"] = to_easy(copy.deepcopy(config)) if obj is g else _EasyDict()
                    name = _RELEASE_NAMES.get(type(obj).__name__, type(obj).__name__)
                    meta = dict(type="class", version=6, module_src=module_src, class_name=name, state=state)
                    return (persistence._reconstruct_persistent_obj, (meta,), None)
                return NotImplemented

        buf = io.BytesIO()
        data = {"G": g, "D": None, "G_ema": g, "augment_pipe": None, "training_set_kwargs": {"resolution": 512, "xflip": False}}
        ReleasePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(data)
        return buf.getvalue()


def autograd_node_names(t: torch.Tensor) -> set[str]:
    """The class names of every node in ``t``'s backward graph."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo += [nxt for nxt, _ in fn.next_functions]
    return {type(fn).__name__ for fn in seen}
