"""End to end (acceptance): the README's two commands exist and work.

* the test command is literally ``python -m pytest -q tests``: README.md shows it and .ci/run runs it;
* the pipeline command ``python scripts/run_pipeline.py --comfyui ... --portrait ... --out ...``: README.md
  shows it, every option it uses is one the script accepts, ``--help`` prints the usage, and (with a real
  ComfyUI) run as written on an install without the models it stops before any heavy work (no ComfyUI
  start) with the model-check table of the default workflow.

Related, not repeated here (tests/test_run_pipeline.py): a tiny workflow with one missing checkpoint stops
before ComfyUI and names the node (test_stops_before_comfyui_when_models_missing); the pipeline run end to
end through a headless ComfyUI (test_run_pipeline_end_to_end, test_geometry_workflow_end_to_end_on_test_models).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "run_pipeline.py")
TEST_COMMAND = "python -m pytest -q tests"


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
        return fh.read()


def _code_lines(markdown: str) -> list[str]:
    """Lines inside fenced code blocks of a markdown text, stripped."""
    out, inside = [], False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            out.append(line.strip())
    return out


def _pipeline_command(readme: str) -> list[str]:
    cmds = [shlex.split(line) for line in _code_lines(readme)
            if line.startswith("python scripts/run_pipeline.py") and "--quick" not in line]  # the real run, not the quick one
    assert cmds, "README.md shows no `python scripts/run_pipeline.py ...` command in a code block"
    return cmds[0]


def test_readme_test_command_is_what_ci_runs():
    readme = _read("README.md")
    assert TEST_COMMAND in _code_lines(readme), f"README.md has no code line `{TEST_COMMAND}`"
    ci = [line.split("#", 1)[0].strip() for line in _read(".ci/run").splitlines()]
    assert TEST_COMMAND in ci, f".ci/run does not run `{TEST_COMMAND}` (outside a comment)"
    # and CI fails when that command fails: its status is what .ci/run exits with
    ci_text = _read(".ci/run")
    assert re.search(r"python -m pytest -q tests\b[^\n]*\n\s*rc=\$\?", ci_text) and 'exit "$rc"' in ci_text


def test_readme_pipeline_command_and_help():
    cmd = _pipeline_command(_read("README.md"))
    assert cmd[:2] == ["python", "scripts/run_pipeline.py"]
    for flag in ("--comfyui", "--portrait", "--out"):
        assert flag in cmd, f"README's pipeline command lacks {flag}: {' '.join(cmd)}"
    r = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:") and "run_pipeline.py" in r.stdout.splitlines()[0]
    for flag in cmd[2::2]:  # every option the README uses is documented in the usage
        assert flag.startswith("--") and flag in r.stdout, f"{flag} (from README) missing in --help"
    assert "Exit codes" in r.stdout  # the epilog: what 0/1/2/3 mean
    # without the required arguments: a usage error (exit 2), not a traceback
    r = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.comfy
def test_readme_pipeline_command_stops_on_missing_models(tmp_path, comfy_path, comfy_python, portraits_dir):
    """The README command as written (its three options, the default workflow and --models auto), with
    ComfyUI's --base-directory pointed at an empty folder so no model file is present: exit 1 after the
    model check, before ComfyUI starts, with the table rows of every required model marked MISSING."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import check_models

    models = check_models.load_models_module()
    readme_cmd = _pipeline_command(_read("README.md"))
    values = {"--comfyui": comfy_path, "--portrait": os.path.join(portraits_dir, "jolie_1.jpg"), "--out": str(tmp_path / "out")}
    args = [values.get(prev, tok) if prev in values else tok for prev, tok in zip([None] + readme_cmd[2:], readme_cmd[2:])]
    base = tmp_path / "empty_base"
    base.mkdir()
    cmd = [sys.executable, SCRIPT, *args, "--python", comfy_python, "--base-directory", str(base)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    # the default workflow textures the head, so the check asks for the 'full' workflow's models
    assert "models for the 'full' workflow" in r.stdout and "folders from ComfyUI's folder_paths" in r.stdout
    expected = models.missing_required(models.check_models(lambda key: [], "full"))
    assert expected, "the model table requires nothing for the full workflow?"
    for row in expected:
        assert re.search(rf"^MISSING\s+.*{re.escape(row.spec.filename[:20])}", r.stdout, re.M), f"{row.spec.key} not listed as MISSING"
    assert f"{len(expected)} required model file(s) missing" in r.stdout
    assert "stopped before starting ComfyUI" in r.stderr
    # no heavy work: ComfyUI was never started, nothing was uploaded or queued
    assert "== starting ComfyUI" not in r.stdout and not os.path.exists(tmp_path / "out" / "comfyui.log")
    assert not os.path.exists(tmp_path / "out" / "workflow_api.json")
    print(f"README pipeline command without models: exit 1 after {elapsed:.1f} s, {len(expected)} MISSING rows")
    assert elapsed < 60
