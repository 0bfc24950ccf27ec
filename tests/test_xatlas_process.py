"""xatlas in a child process (core/texture/xatlas_process.py): the same atlas as in-process, and a child
that hangs, fails or is interrupted never holds the caller for longer than its clock allows.

A hung xatlas is played by a child that sleeps (xatlas' own hang cannot be produced on demand); it writes
its pid first, so the tests can check that it is gone afterwards.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import pytest
import trimesh

from idsculpt.core.texture import xatlas_process
from idsculpt.core.texture.xatlas_job import generate

OPTIONS = {"max_chart_area": 0.0, "resolution": 256, "padding": 2, "bilinear": True}
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"


def _patches() -> list:
    """Two patches: an icosphere and a box, as patch-local meshes."""
    out = []
    for m in (trimesh.creation.icosphere(3), trimesh.creation.box()):
        out.append((np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.uint32)))
    return out


def _sleeper(pid_files: list[str], tmp_path):
    """A command factory whose child never finishes (until killed) and leaves its pid in a file."""
    def command(job: str, result: str) -> list[str]:
        pid_files.append(str(tmp_path / f"pid{len(pid_files)}"))
        return [sys.executable, "-c", SLEEPER, pid_files[-1]]
    return command


def _gone(pid_file: str) -> bool:
    for _ in range(50):  # the child writes its pid just after it starts
        if os.path.exists(pid_file) and open(pid_file).read():
            break
        time.sleep(0.05)
    else:
        return True  # killed before it could even write it
    try:
        os.kill(int(open(pid_file).read()), 0)
    except ProcessLookupError:
        return True
    return False


def _same(a, b) -> None:
    (parts_a, charts_a), (parts_b, charts_b) = a, b
    assert charts_a == charts_b and len(parts_a) == len(parts_b)
    for pa, pb in zip(parts_a, parts_b):
        for xa, xb in zip(pa, pb):
            np.testing.assert_array_equal(xa, xb)


def test_the_child_gives_the_in_process_atlas():
    patches = _patches()
    _same(xatlas_process.generate_atlas(patches, OPTIONS), generate(patches, OPTIONS))


def test_a_hung_child_is_killed_and_the_job_started_again(tmp_path):
    pids: list[str] = []
    sleeper = _sleeper(pids, tmp_path)

    def first_hangs(job: str, result: str) -> list[str]:
        return sleeper(job, result) if not pids else xatlas_process.child_command(job, result)

    patches = _patches()
    t0 = time.monotonic()
    got = xatlas_process.generate_atlas(patches, OPTIONS, time_limit_s=1.0, command=first_hangs)
    assert time.monotonic() - t0 < 20
    _same(got, generate(patches, OPTIONS))
    assert len(pids) == 1 and _gone(pids[0])


def test_a_child_that_never_finishes_ends_in_a_clear_error(tmp_path):
    pids: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not finish the UV atlas of a \d+-face mesh within 1 s, 2 times.*max_faces"):
        xatlas_process.generate_atlas(_patches(), OPTIONS, time_limit_s=1.0, command=_sleeper(pids, tmp_path))
    assert time.monotonic() - t0 < 10
    assert len(pids) == 2 and all(_gone(p) for p in pids)


def test_interrupt_stops_the_child_within_two_seconds(tmp_path):
    class Cancelled(Exception):
        pass

    pids: list[str] = []
    start = time.monotonic()
    raised_at: list[float] = []

    def interrupt() -> None:
        if time.monotonic() - start > 0.5:
            raised_at.append(time.monotonic())
            raise Cancelled()

    with pytest.raises(Cancelled):
        xatlas_process.generate_atlas(_patches(), OPTIONS, interrupt=interrupt, command=_sleeper(pids, tmp_path))
    assert time.monotonic() - raised_at[0] < 2.0 and len(pids) == 1 and _gone(pids[0])


def test_a_failing_child_names_its_error():
    def failing(job: str, result: str) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit('xatlas: invalid mesh (degenerate faces)')"]

    with pytest.raises(RuntimeError, match=r"xatlas failed on a \d+-face mesh \(exit code 1\): xatlas: invalid mesh"):
        xatlas_process.generate_atlas(_patches(), OPTIONS, command=failing)


@pytest.mark.parametrize("child", ["missing", "without site-packages", "frozen"])
def test_without_a_usable_child_python_xatlas_runs_in_process(child, monkeypatch, caplog):
    """No Python at sys.executable; one that lacks numpy and xatlas (``-S``: no site-packages, as a Python
    other than the one running the pack would); a frozen app: the same atlas, made in-process, and a warning."""
    commands = {"missing": lambda job, result: ["/nonexistent/python", job, result],
                "without site-packages": lambda job, result: [sys.executable, "-S", xatlas_process.JOB_SCRIPT, job, result],
                "frozen": xatlas_process.child_command}
    if child == "frozen":
        monkeypatch.setattr(sys, "frozen", True, raising=False)
    patches = _patches()
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        got = xatlas_process.generate_atlas(patches, OPTIONS, command=commands[child])
    _same(got, generate(patches, OPTIONS))
    assert "no child Python for xatlas" in caplog.text
    assert {"missing": "cannot start", "without site-packages": "lacks numpy or xatlas",
            "frozen": "frozen application"}[child] in caplog.text
