"""One optimisation step (forward render, loss, backward, Adam) replayed from a CUDA graph. Its user is the
PanoHead inversion (core/panohead/invert.py builds the step closure, so the method's loss stays in the stage).

Why: a W+ projection or PTI step of the full generator is thousands of small kernels (StyleGAN2
blocks with pure-torch upfirdn2d/bias_act, the volume renderer, VGG16, their backward, Adam). On an
H100 the GPU finishes most of them faster than Python launches them, so the eager step costs the
host's launch time (~90-110 ms). A CUDA graph records the kernels of one step once; each later step
is one graph launch and costs only the GPU's time.

Recipe (PyTorch's documented whole-network capture, "CUDA Graphs" in the CUDA semantics notes):
warm-up iterations on a side stream (lazy cuBLAS/cuDNN set-up, the optimizer's state created
outside the capture), gradients set to None right before the capture so the captured backward
allocates them in the graph's private memory pool (the same addresses on every replay), then
``torch.cuda.graph`` around zero_grad + forward + backward + ``optimizer.step()``. The optimizer must
be ``capturable=True`` (its step counter and bias corrections live on the device); a learning
rate that changes per step is a 0-dim device tensor that the caller ``fill_``s between replays.
Everything else that changes per step (the W+ noise) is a static buffer the caller copies into.

Random numbers: the renderer's stratified / importance samples are drawn from ``generator``, a
private CUDA generator registered with the graph (``CUDAGraph.register_generator_state``), so each
replay draws new numbers (graph replays advance its Philox offset like eager calls would). A
per-step ``manual_seed`` (what the eager loop does) cannot live inside a graph, so graph mode's
samples differ from eager mode's; both are seeded and reproducible. A private generator rather than
the default one keeps the user's global RNG untouched.

The warm-ups, the capture and a check replay change the parameters and optimizer state; they are
restored afterwards to the state before the first warm-up, so the real run starts from exactly the
same place as the eager loop would (a fresh optimizer, the same parameters).

Never silently wrong: after capture, the graph is replayed once from the same state and the same
generator seed as the last (eager) warm-up, and the loss, the rendered image, per-tensor gradient
norms and projections, and per-tensor update norms must agree (to the float noise of atomics in
backward kernels). Any exception in warm-up, capture or check, or a mismatch, raises
:class:`GraphCaptureError` naming the stage; callers then log one warning and run their eager loop.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Callable, Optional, Sequence

import torch

from .cuda_graph import no_host_syncs, warmup_stream

log = logging.getLogger("IDSculpt")

StepFn = Callable[[], dict]  # -> {"loss": 0-dim tensor, "image": tensor}; runs zero_grad, forward, backward, opt.step


class GraphCaptureError(RuntimeError):
    """Capturing (or checking) the CUDA graph of a step failed; ``stage`` says where."""

    def __init__(self, name: str, stage: str, detail: str) -> None:
        super().__init__(f"{name}: CUDA graph {stage} failed: {detail}")
        self.name, self.stage, self.detail = name, stage, detail


def graphs_unsupported_reason(device: torch.device | str) -> Optional[str]:
    """None when a training step can be graphed on ``device``, else why not (for log lines)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run is on {device.type})"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return f"torch {torch.__version__} has no CUDAGraph.register_generator_state (needs torch >= 2.4)"
    return None


def _differing(what: str, ref: torch.Tensor, got: torch.Tensor, scale: torch.Tensor, rtol: float, floor: float,
               values: bool = True) -> Optional[str]:
    """What differs between per-tensor statistics of the eager and the replayed step, or None: a tensor
    differs beyond ``rtol`` of its ``scale`` plus ``floor`` times the largest scale (tensors whose
    statistic is ~0 would otherwise fail on float noise)."""
    tol = rtol * scale + floor * float(scale.max()) + 1e-12
    bad = ((ref - got).abs() > tol).nonzero().flatten().tolist()
    if not bad:
        return None
    first = f"#{bad[0]} {float(got[bad[0]]):.4g} vs {float(ref[bad[0]]):.4g}" if values else f"#{bad[0]}"
    return f"{what} of {len(bad)} tensors differ (first: {first})"


def _short(e: BaseException, n: int = 300) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:n]}{'...' if len(msg) > n else ''}"


def _repair_default_generator(device: torch.device) -> None:
    """After a capture that failed before its end: torch registers the default CUDA generator with
    every graph and puts it in capture mode at ``capture_begin``; only a *successful* ``capture_end``
    takes it out again, and until then every eager ``torch.rand`` on the device fails ("Offset
    increment outside graph capture"). One tiny successful capture restores it."""
    try:
        torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001  (a non-sticky capture error may surface here once)
        pass
    try:
        x = torch.zeros(1, device=device)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            x.add_(1)
        del g
    except Exception as e:  # noqa: BLE001
        log.warning("IDSculpt: could not reset the CUDA generator after a failed graph capture (%s)", _short(e))


class GraphedStep:
    """Capture ``step_fn`` (one full optimisation step) in a CUDA graph and replay it.

    ``params``: every tensor the optimizer updates (restored after warm-up/capture/check).
    ``optimizer``: built with ``capturable=True``; its state is zeroed after capture, which is the
    state of a fresh Adam. ``generator``: the private CUDA generator ``step_fn`` draws from.
    """

    # agreement required between the check replay and the eager warm-up step (same state, same seed)
    # An eager step is not bit-reproducible on a GPU (atomic adds in the renderer's backward): on the
    # H100 the replay-vs-eager image differed by 1.7e-4..6.1e-4 (relative L2) and one small gradient
    # tensor's norm by 4.5 %, with nothing wrong. A value frozen into the graph moves the loss by whole
    # percents (tests/test_panohead_graphs.py), far above these.
    LOSS_RTOL = 1e-3
    IMAGE_RTOL = 2e-3
    GRAD_RTOL = 2e-2
    UPDATE_RTOL = 5e-2  # Adam's first update is ~lr*sign(g): float noise can flip elements with g ~ 0

    def __init__(self, name: str, step_fn: StepFn, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
                 generator: torch.Generator, warmup: int = 3, check: bool = True) -> None:
        self.name = name
        self.step_fn = step_fn
        self.params = list(params)
        self.optimizer = optimizer
        self.generator = generator
        self.warmup = max(int(warmup), 1)
        self.check = bool(check)
        self.device = self.params[0].device
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Optional[dict] = None
        self.capture_s = 0.0
        self._p0: list[torch.Tensor] = []

    # ------------------------------------------------------------------ state
    @torch.no_grad()
    def _restore(self) -> None:
        for p, s in zip(self.params, self._p0):
            p.copy_(s)
        for state in self.optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    v.zero_()  # Adam: step, exp_avg, exp_avg_sq of a fresh optimizer are zeros

    @torch.no_grad()
    def _summary(self, out: dict) -> dict:
        zero = torch.zeros((), device=self.device)
        gn, gd, pn, un = [], [], [], []
        for p, p0 in zip(self.params, self._p0):
            g = p.grad
            gn.append(g.float().norm() if g is not None else zero)
            gd.append((g.float() * p0.float()).sum() if g is not None else zero)
            pn.append(p0.float().norm())
            un.append((p.float() - p0.float()).norm())
        finite = torch.stack([torch.isfinite(p).all() for p in self.params]).all() & torch.isfinite(out["loss"]).all()
        return {"loss": out["loss"].detach().double().reshape(()).clone(), "image": out["image"].detach().float().clone(),
                "grad_norm": torch.stack(gn).double(), "grad_dot": torch.stack(gd).double(), "p0_norm": torch.stack(pn).double(),
                "update_norm": torch.stack(un).double(), "finite": finite}

    def _compare(self, ref: dict, got: dict) -> Optional[str]:
        """None when the replayed step agrees with the eager one, else what differs."""
        if not bool(got["finite"]):
            return "non-finite loss or parameters after the replay"
        problems = []
        lr, lg = float(ref["loss"]), float(got["loss"])
        if abs(lr - lg) > self.LOSS_RTOL * abs(lr) + 1e-6:
            problems.append(f"loss {lg!r} vs eager {lr!r}")
        di = float((ref["image"] - got["image"]).norm())
        ni = float(ref["image"].norm())
        if di > self.IMAGE_RTOL * ni + 1e-6:
            problems.append(f"image differs by {di / max(ni, 1e-12):.2e} (relative L2)")
        gn_r = ref["grad_norm"]
        problems += [p for p in (
            # floor 1 % of the largest norm: in a server run on the H100 (neural 128², full-size generator) the
            # PTI capture was rejected for 9 tensors whose gradients are ~0.3 % of the largest and differ by
            # ~40 % (3.5e-4 vs 4.9e-4): cancelling sums under the renderer's atomics, not a wrong graph
            _differing("gradient norms", gn_r, got["grad_norm"], gn_r, self.GRAD_RTOL, 1e-2),
            _differing("gradient directions", ref["grad_dot"], got["grad_dot"], gn_r * ref["p0_norm"], self.GRAD_RTOL, 1e-5,
                       values=False),
            _differing("optimizer updates", ref["update_norm"], got["update_norm"], ref["update_norm"], self.UPDATE_RTOL, 1e-3),
        ) if p]
        return "; ".join(problems) or None

    # ------------------------------------------------------------------ capture / replay
    def capture(self, seed: int) -> float:
        """Warm up, capture, check; leaves parameters and optimizer as before and the generator
        seeded with ``seed``. Returns the seconds it took. Raises :class:`GraphCaptureError`."""
        why = graphs_unsupported_reason(self.device)
        if why is not None:
            raise GraphCaptureError(self.name, "set-up", why)
        t0 = time.perf_counter()
        stage = "set-up"
        capture_begun = capture_ok = False
        graph: Optional[torch.cuda.CUDAGraph] = None
        # torch.cuda.graph's __exit__ does not restore the caller's stream when capture_end raises
        prev_stream = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.device(self.device):
                self._p0 = [p.detach().clone() for p in self.params]
                stage = "warm-up (eager step on a side stream)"
                side = warmup_stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side), warnings.catch_warnings():
                    # torch warns once that a capturable optimizer steps outside a capture: intended here
                    warnings.filterwarnings("ignore", message=".*capturable=True.*")
                    ref = None
                    for i in range(max(self.warmup, 2)):
                        self._restore()
                        self.generator.manual_seed(seed)
                        # The first warm-up step may sync once (lazy initialisation on a step's first run: W+
                        # is the first thing stage 1 runs, and its guarded warm-up failed in a server run on
                        # the H100); the later ones, like the capture, must not.
                        with no_host_syncs() if i > 0 else contextlib.nullcontext():
                            out = self.step_fn()
                    if self.check:
                        ref = self._summary(out)
                    del out
                torch.cuda.current_stream(self.device).wait_stream(side)
                stage = "capture"
                self._restore()
                self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the grads in the graph's pool
                graph = torch.cuda.CUDAGraph()
                graph.register_generator_state(self.generator)
                capture_begun = True
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = self.step_fn()
                capture_ok = True
                self.graph, self.outputs = graph, outputs
                if self.check:
                    stage = "replay check (graph replay vs eager step from the same state)"
                    self._restore()
                    self.generator.manual_seed(seed)
                    graph.replay()
                    problem = self._compare(ref, self._summary(outputs))
                    if problem is not None:
                        raise RuntimeError(problem)
                self._restore()
                self.generator.manual_seed(seed)
                torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001  (any failure: the caller runs eagerly)
            try:
                if torch.cuda.current_stream(self.device) != prev_stream:
                    torch.cuda.set_stream(prev_stream)
            except Exception:  # noqa: BLE001
                pass
            self._cleanup_after_failure(graph if capture_begun and not capture_ok else None)
            raise GraphCaptureError(self.name, stage, _short(e)) from e
        finally:
            self._p0 = []
        self.capture_s = time.perf_counter() - t0
        log.info("IDSculpt: %s captured in a CUDA graph (%.2f s with warm-up and check)", self.name, self.capture_s)
        return self.capture_s

    def _cleanup_after_failure(self, failed_graph: Optional[torch.cuda.CUDAGraph]) -> None:
        """Undo what a failed warm-up/capture/check left behind; ``failed_graph``: a capture that
        began but did not end cleanly."""
        self.graph, self.outputs = None, None
        if failed_graph is not None:
            # some torch versions raise in capture_end before they stop routing this thread's
            # allocations to the graph's pool; end it here (an error just means it was ended)
            try:
                torch._C._cuda_endAllocateToPool(self.device.index if self.device.index is not None
                                                 else torch.cuda.current_device(), failed_graph.pool())
            except Exception:  # noqa: BLE001
                pass
            _repair_default_generator(self.device)
        try:
            if self._p0:
                self._restore()
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001
            log.warning("IDSculpt: %s: restoring the state after a failed capture raised %s", self.name, _short(e))

    def replay(self) -> dict:
        """Run one captured step; returns the static outputs (overwritten by the next replay)."""
        if self.graph is None or self.outputs is None:
            raise RuntimeError(f"{self.name}: replay() before a successful capture()")
        self.graph.replay()
        return self.outputs

    def close(self) -> None:
        """Free the graph, its memory pool and the gradients that live in it."""
        self.graph, self.outputs = None, None
        self.optimizer.zero_grad(set_to_none=True)
