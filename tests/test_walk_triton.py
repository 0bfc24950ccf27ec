"""core/render/walk_triton.py: the fused silhouette walk must make the torch walk's decisions.

On CUDA the kernel runs natively; on a CPU machine with Triton installed it runs in Triton's
interpreter (TRITON_INTERPRET=1, slow, so a smaller image); CI installs Triton for that. Without
Triton the comparison is skipped (the torch walk, which the other render tests cover, is then the only
one); the fallback test needs no Triton.
"""
from __future__ import annotations

import torch

from idsculpt.core.camera import Cameras
from idsculpt.core.dmtet.procedural import procedural_head_mesh
from idsculpt.core.render import walk_triton
from idsculpt.core.render.torch_backend import TorchBackend

from triton_interpreter import in_interpreter, needs_triton, rerun_in_interpreter


def _render(be: TorchBackend, verts: torch.Tensor, faces: torch.Tensor, cams: Cameras, rast: torch.Tensor):
    v = verts.clone().requires_grad_(True)
    homo = torch.cat([v, torch.ones_like(v[:, :1])], -1)
    clip = (homo[None] @ cams.full_projection().to(homo).transpose(1, 2)).contiguous()
    cover = (rast[..., 3:4] > 0).float()
    color = torch.cat([cover, cover * clip[0, 0, 2]], -1)  # a second channel that varies per image
    out = be.antialias(color.contiguous(), rast, clip, faces)
    (out * torch.linspace(0.5, 1.5, out.shape[2], device=out.device)[None, None, :, None]).sum().backward()
    return out.detach(), v.grad


@needs_triton
def test_fused_walk_matches_the_torch_walk(monkeypatch) -> None:
    """On CUDA natively; on a CPU in Triton's interpreter, which must be on before Triton is first
    imported (other packages may import it early): the test then re-runs itself in a fresh process."""
    if torch.cuda.is_available():
        return _compare(torch.device("cuda"), monkeypatch)
    if not in_interpreter():
        return rerun_in_interpreter(__file__, "test_fused_walk_matches_the_torch_walk")
    walk_triton.KERNEL.reset()
    monkeypatch.setattr(walk_triton.KERNEL, "available", lambda dev: walk_triton.KERNEL.get() is not None)
    try:
        return _compare(torch.device("cpu"), monkeypatch)
    finally:
        walk_triton.KERNEL.reset()


def _compare(device: torch.device, monkeypatch) -> None:
    res = 512 if device.type == "cuda" else 96
    head = procedural_head_mesh(64 if device.type == "cuda" else 48)  # sub-pixel triangles: long walks
    verts, faces = head.vertices.to(device), head.faces.to(device).int()
    cams = Cameras.orbit([10.0, -5.0], [30.0, 150.0], 3.2, 40.0, res).to(device)
    be_torch = TorchBackend(device, fused_walk=False)
    be_fused = TorchBackend(device, fused_walk=True)
    homo = torch.cat([verts, torch.ones_like(verts[:, :1])], -1)
    clip = (homo[None] @ cams.full_projection().to(homo).transpose(1, 2)).contiguous()
    rast = be_torch.rasterize(clip, faces, (res, res))
    # every search is run both ways: the same usable pairs, and for those the same edge
    searches = []
    search = TorchBackend._find_silhouette_edge

    def both(self, *args):
        fused, self.fused_walk = self.fused_walk, False
        ref = search(self, *args)
        self.fused_walk = fused
        got = search(self, *args)
        searches.append((ref, got))
        return got

    monkeypatch.setattr(TorchBackend, "_find_silhouette_edge", both)
    for walk_steps, background in ((8, True), (0, False), (3, True)):
        be_torch.walk_steps = be_fused.walk_steps = walk_steps
        be_torch.background_silhouettes = be_fused.background_silhouettes = background
        a, ga = _render(be_torch, verts, faces, cams, rast)
        b, gb = _render(be_fused, verts, faces, cams, rast)
        # the same edges and crossings; CUDA's atomic index_add may sum in another order (~1e-8)
        assert torch.allclose(a, b, rtol=0, atol=1e-6), (walk_steps, background, float((a - b).abs().max()))
        assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-7 * float(ga.abs().max())), (walk_steps, background)
        assert float(ga.abs().sum()) > 0
    assert len(searches) == 6
    for (rt, rk, rok), (gt, gk, gok) in searches:
        assert torch.equal(rok, gok)
        assert torch.equal(rt[rok], gt[gok]) and torch.equal(rk[rok], gk[gok])
    assert sum(int(ok.sum()) for (_, _, ok), _ in searches) > 1000  # many silhouette pairs were compared


def test_a_failing_kernel_falls_back_to_the_torch_walk(monkeypatch, caplog) -> None:
    """Triton installed but unable to compile (an unsupported GPU, a broken toolchain): one warning, and
    the render goes on with the torch walk instead of failing the run."""
    import logging

    def broken(*args, **kwargs):
        raise RuntimeError("PTX compilation failed")

    monkeypatch.setattr(walk_triton.KERNEL, "off", None)
    monkeypatch.setattr(walk_triton.KERNEL, "available", lambda dev: walk_triton.KERNEL.off is None)
    monkeypatch.setattr(walk_triton, "find_silhouette_edge", broken)
    head = procedural_head_mesh(16)
    cams = Cameras.orbit(10.0, 30.0, 3.2, 40.0, 64)
    be = TorchBackend("cpu", fused_walk=False)
    homo = torch.cat([head.vertices, torch.ones_like(head.vertices[:, :1])], -1)
    clip = (homo[None] @ cams.full_projection().to(homo).transpose(1, 2)).contiguous()
    rast = be.rasterize(clip, head.faces.int(), (64, 64))
    ref, gref = _render(be, head.vertices, head.faces.int(), cams, rast)
    be.fused_walk = True
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        out, g = _render(be, head.vertices, head.faces.int(), cams, rast)
        out2, _ = _render(be, head.vertices, head.faces.int(), cams, rast)
    assert torch.equal(out, ref) and torch.equal(g, gref) and torch.equal(out2, ref)
    assert caplog.text.count("fused silhouette walk (Triton) failed") == 1 and "PTX compilation failed" in caplog.text
