"""core/speed/cuda_graph.py: which calls share a graph, eager fallbacks, and (on CUDA) that replays equal eager calls."""
from __future__ import annotations

import logging
import os
import sys
import uuid

import pytest
import torch

from idsculpt.core.speed.cuda_graph import GraphedCall

sys.path.insert(0, os.path.dirname(__file__))
from cuda_malloc_async import rerun_under_cuda_malloc_async  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


class Net(torch.nn.Module):
    """A call shaped like ComfyUI's: tensors, a nested options dict with plain values and objects."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x, t, options):
        h = torch.relu(self.conv(x)) * options["scale"]
        h = h.mean((2, 3)) + t[:, None] * options["extra"]["offset"]
        if options["extra"]["flip"]:
            h = -h
        return {"out": self.lin(h), "list": [h * 2, None]}


def _args(gen: torch.Generator, device="cpu", scale: float = 1.5, b: int = 2):
    x = torch.randn(b, 4, 8, 8, generator=gen).to(device)
    t = torch.rand(b, generator=gen).to(device)
    offset = torch.randn(8, generator=gen).to(device)
    return (x, t, {"scale": scale, "extra": {"offset": offset, "flip": False, "id": uuid.uuid4()}})


def test_signature_separates_shapes_values_objects_and_weights() -> None:
    net = Net()
    g = GraphedCall("net", [net])
    gen = torch.Generator().manual_seed(0)

    def key(args):
        from torch.utils import _pytree as pytree

        leaves, spec = pytree.tree_flatten((args, {}))
        return g._key(leaves, spec)

    a, b = _args(gen), _args(gen)
    assert key(a) == key(b)  # new values, new uuids: same graph
    assert key(a) != key(_args(gen, b=3))  # another batch size
    assert key(a) != key(_args(gen, scale=2.0))  # a plain Python value is baked into a graph
    c = _args(gen)
    c[2]["extra"]["flip"] = True
    assert key(a) != key(c)
    d = _args(gen)
    d[2]["extra"]["patch"] = object()
    e = _args(gen)
    e[2]["extra"]["patch"] = object()
    assert key(d) != key(e)  # other objects: by identity (a new patch object may hold other tensors)
    k0 = key(a)
    net.lin.weight = torch.nn.Parameter(net.lin.weight.detach().clone())  # a LoRA re-patch / reload
    assert key(a) != k0


def test_cpu_and_autograd_calls_run_eagerly() -> None:
    net = Net()
    g = GraphedCall("net", [net])
    gen = torch.Generator().manual_seed(1)
    args = _args(gen)
    with torch.no_grad():
        for _ in range(4):
            out = g.call(net, args)
    assert g.captures == 0 and g.eager_calls == 4
    assert torch.equal(out["out"], net(*args)["out"])


@cuda
def test_replay_equals_eager_and_follows_inputs() -> None:
    torch.manual_seed(0)
    net = Net().cuda()
    g = GraphedCall("net", [net], warmup=2)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        outs, refs = [], []
        for _ in range(6):
            args = _args(gen, "cuda")
            outs.append(g.call(net, args))
            refs.append(net(*args))
    assert g.captures == 1 and g.replays == 4 and g.eager_calls == 2
    for o, r in zip(outs, refs):  # every replay computed its own inputs, and no output was overwritten later
        assert torch.equal(o["out"], r["out"]) and torch.equal(o["list"][0], r["list"][0]) and o["list"][1] is None


@cuda
def test_new_weights_recapture_and_plain_values_do_not_leak() -> None:
    net = Net().cuda()
    g = GraphedCall("net", [net], warmup=1)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(3):
            g.call(net, _args(gen, "cuda"))
        net.lin.weight = torch.nn.Parameter(torch.randn_like(net.lin.weight))
        for _ in range(3):
            args = _args(gen, "cuda")
            out = g.call(net, args)
        assert torch.equal(out["out"], net(*args)["out"])
        args2 = _args(gen, "cuda", scale=3.0)
        for _ in range(3):
            out = g.call(net, args2)
        assert torch.equal(out["out"], net(*args2)["out"])
    assert g.captures == 3


@cuda
def test_capture_failure_falls_back_to_eager(caplog) -> None:
    def host_sync(x):
        return x * float(x.sum().item())  # a host sync cannot be captured

    g = GraphedCall("sync", warmup=1)
    x = torch.randn(4, device="cuda")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="IDSculpt"):
        outs = [g.call(host_sync, (x,)) for _ in range(4)]
    assert g.captures == 0 and g.replays == 0
    assert all(torch.equal(o, host_sync(x)) for o in outs)
    assert "capture failed" in caplog.text


@cuda
def test_repeated_captures_do_not_grow_allocated_memory() -> None:
    """Each run of a workflow captures new graphs. The eager warm-up before a capture used a fresh
    stream each time, and PyTorch keeps a cuBLAS workspace per stream that ran a matmul: allocated
    memory grew by ~200 MiB per run with no tensor alive. All warm-ups now share one stream."""
    torch.manual_seed(0)
    net = Net().cuda()
    gen = torch.Generator().manual_seed(4)

    def one_run(b: int) -> None:
        g = GraphedCall("net", [net], warmup=1)
        with torch.no_grad():
            for _ in range(3):
                g.call(net, _args(gen, "cuda", b=b))
        assert g.captures == 1
        g.reset()

    one_run(2)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for b in range(3, 12):
        one_run(b)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - base
    assert grown < 2**20, f"allocated memory grew by {grown / 2**20:.1f} MiB over 9 capture/reset cycles"


def test_graph_memory_release_is_a_no_op_without_cuda(monkeypatch) -> None:
    from idsculpt.core.speed import cuda_graph

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_graph.release_graph_memory() is False


@cuda
def test_capture_failure_does_not_abort_under_cuda_malloc_async() -> None:
    """ComfyUI's default allocator: a host sync inside a capture used to kill the process (SIGABRT, on an
    H100); the warm-up now finds the sync first (core.speed.cuda_graph.no_host_syncs) and the call stays eager."""
    rerun_under_cuda_malloc_async(__file__, "test_capture_failure_falls_back_to_eager", timeout=300)
