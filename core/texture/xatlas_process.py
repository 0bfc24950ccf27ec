"""xatlas in a child process: bounded in time, stopped by Interrupt, never freezing the host Python.

Why a process: xatlas-python's ``Atlas.generate`` runs xatlas' C++ charting and packing without
releasing the GIL. In-process, every other Python thread (ComfyUI's web server, its progress messages)
stands still for the whole unwrap, no Python-level timeout or Interrupt check can run, and if xatlas'
own worker pool never returns (seen once on the 2-core CI machine: an 8k-face sphere that takes 0.1 s
hung until CI's 90-minute limit; mworchel/xatlas-python#16 reports the same) the host hangs for good.
A child process is waited on with a clock, polled for Interrupt, and killed.

Cost: starting the child (Python + numpy + xatlas imports) and the two ``.npz`` files: a 100k-face head
on the 2-core CPU machine unwraps in 2.8-2.9 s instead of 2.6 s. Where no child can do the job
(``sys.executable`` cannot be started, is a frozen app, or lacks numpy or xatlas), xatlas runs in-process
as before, with a warning in the log.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

from ..stage_types import InterruptFn
from .xatlas_job import EXIT_MISSING_PACKAGES, Patch, PatchUV, generate, load_result, save_job

log = logging.getLogger("IDSculpt")

# A head's unwrap takes 1-4 s (100k faces in patches, 2-core machine); a whole, unpatched 80k-face
# ellipsoid took 70 s. Past this the child is taken to be hung: killed, and started once more.
TIME_LIMIT_S = 300.0
ATTEMPTS = 2
POLL_S = 0.1  # Interrupt is checked this often (the contract asks for a stop within 2 s)
JOB_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xatlas_job.py")


def child_command(job: str, result: str) -> list[str]:
    """The child's command line: this Python running xatlas_job.py by path (no pack import needed)."""
    return [sys.executable, JOB_SCRIPT, job, result]


def generate_atlas(patches: list[Patch], options: dict, interrupt: Optional[InterruptFn] = None,
                   time_limit_s: float = TIME_LIMIT_S, attempts: int = ATTEMPTS,
                   command: Callable[[str, str], list[str]] = child_command) -> tuple[list[PatchUV], int]:
    """:func:`xatlas_job.generate` in a child process; the same result, or a clear error.

    ``interrupt`` is called every ``POLL_S`` while the child runs; whatever it raises propagates after
    the child is killed. A child past ``time_limit_s`` is killed and the job started again, up to
    ``attempts`` times in all (a hang in xatlas' worker pool is a race, not a property of the mesh).
    """
    if getattr(sys, "frozen", False):  # a bundled app: sys.executable is the app, not a Python
        return _in_process(patches, options, "sys.executable is a frozen application")
    faces = sum(int(f.shape[0]) for _, f in patches)
    with tempfile.TemporaryDirectory(prefix="idsculpt_xatlas_") as tmp:
        job, result, errors = (os.path.join(tmp, name) for name in ("job.npz", "result.npz", "stderr.txt"))
        save_job(job, patches, options)
        for attempt in range(1, attempts + 1):
            if interrupt is not None:
                interrupt()
            try:  # stderr goes to a file: a pipe nobody reads while waiting could fill and stall the child
                with open(errors, "wb") as err:
                    proc = subprocess.Popen(command(job, result), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=err, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            except OSError as e:
                return _in_process(patches, options, f"cannot start {sys.executable}: {e}")
            outcome = _wait(proc, interrupt, time_limit_s)
            if outcome == "done":
                return load_result(result)
            if outcome == "failed" and proc.returncode == EXIT_MISSING_PACKAGES:
                return _in_process(patches, options, f"{sys.executable} lacks numpy or xatlas")
            if outcome == "failed":
                raise RuntimeError(f"xatlas failed on a {faces}-face mesh (exit code {proc.returncode}): {_last_line(errors)}")
            log.warning("IDSculpt UV unwrap: xatlas did not finish within %.0f s on a %d-face mesh (attempt %d of %d); "
                        "it was stopped", time_limit_s, faces, attempt, attempts)
    raise RuntimeError(f"xatlas did not finish the UV atlas of a {faces}-face mesh within {time_limit_s:.0f} s, "
                       f"{attempts} times; it was stopped each time. Lower max_faces on the node (fewer faces, "
                       f"faster charts), or unwrap the mesh in a 3D tool and give the node a mesh that has UVs.")


def _in_process(patches: list[Patch], options: dict, why: str) -> tuple[list[PatchUV], int]:
    log.warning("IDSculpt UV unwrap: no child Python for xatlas (%s); running it in this process, where it "
                "cannot be interrupted", why)
    return generate(patches, options)


def _wait(proc: subprocess.Popen, interrupt: Optional[InterruptFn], time_limit_s: float) -> str:
    """Wait for the child: "done", "failed" or "timeout"; the child is dead when this returns or raises."""
    deadline = time.monotonic() + time_limit_s
    try:
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                return "done" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                pass
            if interrupt is not None:
                interrupt()
            if time.monotonic() > deadline:
                return "timeout"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _last_line(path: str) -> str:
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else "no message"
