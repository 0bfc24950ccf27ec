"""IDSculpt Model Check: which of the pack's model files this ComfyUI can see, and which of its Python
packages import in ComfyUI's Python, as a text report.

Thin: the table and the search live in core/models.py, the package report in core/dependencies.py;
this node only hands the first ComfyUI's folder list (``folder_paths.get_folder_paths``, which
includes extra_model_paths.yaml entries).
"""
from __future__ import annotations

import os

from comfy_api.latest import io, ui

import folder_paths

from ..core.dependencies import format_packages_table, python_packages_report
from ..core.models import WORKFLOWS, check_models, format_table, missing_required


def comfy_folder_lookup(folder: str) -> list[str]:
    """A folder key's directories as ComfyUI resolves them; keys no node registered yet (e.g. a
    folder another pack would add) fall back to ``models/<key>``, where that pack would look."""
    default = os.path.join(folder_paths.models_dir, folder)
    if folder in folder_paths.folder_names_and_paths:
        paths = list(folder_paths.get_folder_paths(folder))
        return paths if default in paths else paths + [default]
    return [default]


class ModelCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptModelCheck",
            display_name="IDSculpt Model Check",
            category="IDSculpt/loaders",
            description="Lists every model file the IDSculpt workflows load, whether ComfyUI finds it and where to get "
                        "the missing ones (the same table as docs/MODELS.md and scripts/check_models.py), then the "
                        "pack's Python packages: present, missing, or installed but failing to import (with the "
                        "module that is really missing and the pip command).",
            inputs=[
                io.Combo.Input("workflow", options=[*WORKFLOWS, "all"], default="full",
                               tooltip="Which workflow's models to check: geometry (portrait to sculpted head), full "
                                       "(geometry + texture), eval (metric models), or all."),
                io.Boolean.Input("fail_if_missing", default=False,
                                 tooltip="Stop the prompt with the report as the error when a required file or Python "
                                         "package is missing (put this node first in a workflow to fail before any "
                                         "heavy work)."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The model table and the package list as text.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, workflow: str, fail_if_missing: bool = False) -> float:
        return float("nan")  # files may appear between runs: always re-check

    @classmethod
    def execute(cls, workflow: str, fail_if_missing: bool = False) -> io.NodeOutput:
        rows = check_models(comfy_folder_lookup, workflow)
        packages = python_packages_report()
        report = format_table(rows) + "\n\n" + format_packages_table(packages)
        if fail_if_missing:
            if missing_required(rows):
                raise RuntimeError("IDSculpt: required model files are missing.\n" + report)
            if any(p.problem for p in packages):
                raise RuntimeError("IDSculpt: required Python packages are missing or broken.\n" + report)
        return io.NodeOutput(report, ui=ui.PreviewText(report))


NODES = [ModelCheck]
