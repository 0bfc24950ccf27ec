#!/usr/bin/env python3
"""Check that a ComfyUI install has every model file the IDSculpt workflows load.

    python scripts/check_models.py --comfyui /path/to/ComfyUI [--extra-model-paths-config YAML ...]
        [--workflow geometry|full|eval|all] [--python /path/to/comfy/python] [--base-directory DIR]
    python scripts/check_models.py --write-docs docs/MODELS.md     # regenerate the docs from the table

Prints the table of core/models.py with what was found where, then the pack's Python packages as
ComfyUI's Python sees them (core/dependencies.py: present, missing, or installed but broken with the
module really missing); exit code 1 when a required file or package is missing (2 on bad arguments).

Folder resolution is ComfyUI's own: a subprocess runs ComfyUI's Python, imports its ``folder_paths``
(cheap: no torch) and loads ``<ComfyUI>/extra_model_paths.yaml`` plus each ``--extra-model-paths-
config`` with ComfyUI's ``utils.extra_config``, exactly as main.py does at start-up, and prints the
folder lists as JSON. If that Python cannot run, the same rules are applied here (default
``<ComfyUI>/models/<key>`` + the YAML entries) and a note says so.

Runs with any Python 3.9+ that has this repo (standard library only; PyYAML only for the fallback).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from typing import Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


#: the bare package core/'s pure-Python modules are loaded under (see _load_core_module)
_CORE_PACKAGE = "idsculpt_core"


def _load_core_module(stem: str):
    """core/<stem>.py without importing the pack (the pure-Python modules: no torch, no ComfyUI).

    It is loaded as ``idsculpt_core.<stem>`` of a bare package whose path is core/ and whose __init__ is not
    run (core/__init__.py would import torch), so its relative imports of its pure-Python siblings work
    (core/models.py imports core/model_table.py and core/model_docs.py)."""
    if _CORE_PACKAGE not in sys.modules:
        pkg = types.ModuleType(_CORE_PACKAGE)
        pkg.__path__ = [os.path.join(ROOT, "core")]
        sys.modules[_CORE_PACKAGE] = pkg
    return importlib.import_module(f"{_CORE_PACKAGE}.{stem}")


def load_models_module():
    """core/models.py: the model table and its messages."""
    return _load_core_module("models")


def find_comfy_python(comfy_path: str) -> str:
    """ComfyUI's Python: $IDSCULPT_COMFY_PYTHON, a venv beside/inside the checkout, the portable
    build's python_embeded, else this Python (same order as tests/comfy_harness.py)."""
    env = os.environ.get("IDSCULPT_COMFY_PYTHON")
    if env:
        return env
    parent = os.path.dirname(os.path.abspath(comfy_path))
    for c in (os.path.join(parent, "comfyvenv", "bin", "python"), os.path.join(comfy_path, "venv", "bin", "python"),
              os.path.join(comfy_path, ".venv", "bin", "python"), os.path.join(parent, "python_embeded", "python.exe"),
              os.path.join(comfy_path, "venv", "Scripts", "python.exe")):
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return sys.executable


# Runs inside ComfyUI's Python: argv = comfy_path, base_directory or "", folder keys (JSON), yaml paths...
_PROBE = r"""
import json, os, sys, logging
logging.disable(logging.CRITICAL)
comfy_dir, base, keys, yamls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
sys.path.insert(0, comfy_dir)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
if base:
    comfy.cli_args.args.base_directory = base
import folder_paths
import utils.extra_config
default_yaml = os.path.join(comfy_dir, "extra_model_paths.yaml")
for y in ([default_yaml] if os.path.isfile(default_yaml) else []) + yamls:
    utils.extra_config.load_extra_path_config(y)
out = {}
for k in keys:
    d = os.path.join(folder_paths.models_dir, k)
    paths = list(folder_paths.get_folder_paths(k)) if k in folder_paths.folder_names_and_paths else []
    out[k] = paths if d in paths else paths + [d]
print("IDSCULPT_FOLDERS=" + json.dumps(out))
"""


def comfy_folders(comfy_path: str, extra_yaml: Sequence[str] = (), python: Optional[str] = None,
                  base_directory: Optional[str] = None, keys: Optional[Sequence[str]] = None) -> tuple[dict[str, list[str]], str]:
    """{folder key: directories} as the given ComfyUI resolves them, and how it was obtained."""
    models = load_models_module()
    comfy_path = os.path.abspath(comfy_path)
    if not os.path.isfile(os.path.join(comfy_path, "main.py")):
        raise ValueError(f"--comfyui {comfy_path} is not a ComfyUI checkout (no main.py there)")
    for y in extra_yaml:
        if not os.path.isfile(y):
            raise ValueError(f"extra model paths config {y} does not exist")
    keys = sorted(keys or {f for m in models.MODEL_TABLE for f, _ in m.locations})
    py = python or find_comfy_python(comfy_path)
    cmd = [py, "-c", _PROBE, comfy_path, base_directory or "", json.dumps(keys), *map(os.path.abspath, extra_yaml)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=comfy_path)
        for line in proc.stdout.splitlines():
            if line.startswith("IDSCULPT_FOLDERS="):
                return json.loads(line.split("=", 1)[1]), f"ComfyUI's folder_paths (python {py})"
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    except (OSError, subprocess.SubprocessError) as exc:
        why = [f"{type(exc).__name__}: {exc}"]
    return _folders_without_comfy(comfy_path, extra_yaml, base_directory, keys), f"own YAML parsing (ComfyUI's python failed: {why[0]})"


def _folders_without_comfy(comfy_path: str, extra_yaml: Sequence[str], base_directory: Optional[str], keys: Sequence[str]) -> dict[str, list[str]]:
    """ComfyUI's rules re-implemented: <base>/models/<key> + extra_model_paths.yaml entries (with base_path)."""
    import yaml  # only here: the normal path needs nothing beyond the standard library

    models_dir = os.path.join(os.path.abspath(base_directory or comfy_path), "models")
    out: dict[str, list[str]] = {k: [] for k in keys}
    legacy = {"checkpoints": "checkpoints", "controlnet": "controlnet", "vae": "vae", "upscale_models": "upscale_models",
              "clip_vision": "clip_vision", "diffusers": "diffusers"}
    default_yaml = os.path.join(comfy_path, "extra_model_paths.yaml")
    for y in ([default_yaml] if os.path.isfile(default_yaml) else []) + list(extra_yaml):
        with open(y, encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
        ydir = os.path.dirname(os.path.abspath(y))
        for conf in config.values():
            if not conf:
                continue
            conf = dict(conf)
            base = conf.pop("base_path", None)
            if base:
                base = os.path.expandvars(os.path.expanduser(base))
                base = base if os.path.isabs(base) else os.path.abspath(os.path.join(ydir, base))
            is_default = conf.pop("is_default", False)
            for key, value in conf.items():
                for p in str(value).split("\n"):
                    if not p:
                        continue
                    full = os.path.join(base, p) if base else (p if os.path.isabs(p) else os.path.join(ydir, p))
                    lst = out.setdefault(key, [])
                    full = os.path.normpath(full)
                    if full not in lst:
                        lst.insert(0, full) if is_default else lst.append(full)
    for k in keys:
        d = os.path.join(models_dir, legacy.get(k, k))
        if d not in out[k]:
            out[k].insert(0, d)
    return out


def python_packages(python: str, timeout: float = 300.0) -> tuple[Optional[list[dict]], str]:
    """(rows of core/dependencies.python_packages_report as dicts, or None when it could not run; note).
    Runs core/dependencies.py by path in ``python`` (standard library only: no pack import needed)."""
    script = os.path.join(ROOT, "core", "dependencies.py")
    try:
        proc = subprocess.run([python, script, "--json"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not run {python}: {type(exc).__name__}: {exc}"
    for line in proc.stdout.splitlines():
        if line.startswith("IDSCULPT_PACKAGES="):
            return json.loads(line.split("=", 1)[1]), f"python {python}"
    why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return None, f"{python} could not list its packages: {why[0]}"


def packages_report(python: str) -> tuple[bool, str]:
    """(no required package missing or broken, text) for ComfyUI's Python."""
    deps = load_dependencies_module()
    rows, how = python_packages(python)
    if rows is None:
        return False, f"Python packages: {how}"
    ok = not any(r["need"] == deps.REQUIRED and r["status"] in (deps.MISSING, deps.BROKEN) for r in rows)
    return ok, f"Python packages ({how}):\n{deps.format_packages_table(rows)}"


def load_dependencies_module():
    """core/dependencies.py: the Python-package report (standard library only)."""
    return _load_core_module("dependencies")


def lookup_from(folders: dict[str, list[str]]) -> Callable[[str], list[str]]:
    return lambda key: folders.get(key, [])


def run_check(comfy_path: str, workflow="full", extra_yaml: Sequence[str] = (), python: Optional[str] = None,
              base_directory: Optional[str] = None) -> tuple[list, str, str]:
    """(rows, table text, how folders were resolved)."""
    models = load_models_module()
    folders, how = comfy_folders(comfy_path, extra_yaml, python, base_directory)
    rows = models.check_models(lookup_from(folders), workflow)
    return rows, models.format_table(rows), how


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Check the model files of the IDSculpt workflows in a ComfyUI install.")
    ap.add_argument("--comfyui", help="ComfyUI checkout (the folder with main.py)")
    ap.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML",
                    help="extra_model_paths.yaml as passed to ComfyUI (repeatable); <ComfyUI>/extra_model_paths.yaml is always read")
    ap.add_argument("--workflow", default="full", choices=["geometry", "full", "eval", "all"], help="which workflow's models (default full)")
    ap.add_argument("--python", help="ComfyUI's Python (default: its venv, found like the test harness does)")
    ap.add_argument("--base-directory", help="ComfyUI's --base-directory, if it runs with one")
    ap.add_argument("--write-docs", metavar="MD", help="write the table as markdown (docs/MODELS.md) and exit")
    ap.add_argument("--no-packages", action="store_true", help="check model files only, not ComfyUI's Python packages")
    args = ap.parse_args(argv)
    models = load_models_module()
    if args.write_docs:
        with open(args.write_docs, "w", encoding="utf-8") as fh:
            fh.write(models.models_markdown())
        print(f"wrote {args.write_docs}")
        return 0
    if not args.comfyui:
        ap.error("--comfyui is required (or --write-docs)")
    try:
        rows, table, how = run_check(args.comfyui, args.workflow, args.extra_model_paths_config, args.python, args.base_directory)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"IDSculpt models for workflow '{args.workflow}' in {os.path.abspath(args.comfyui)} (folders from {how}):\n")
    print(table)
    packages_ok = True
    if not args.no_packages:
        packages_ok, text = packages_report(args.python or find_comfy_python(args.comfyui))
        print("\n" + text)
    return 1 if models.missing_required(rows) or not packages_ok else 0


if __name__ == "__main__":
    sys.exit(main())
