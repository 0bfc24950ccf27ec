"""The model table's entry point: every weight file the pack's workflows load, found or missing.

One source of truth (the table itself is core/model_table.py) for four consumers, all importing from here:
  * ``check_models(folder_lookup)`` -> rows (present / missing, path found), used by the
    ``IDSculpt Model Check`` node, ``scripts/check_models.py`` and ``scripts/run_pipeline.py``;
  * ``format_table(rows)`` -> the plain-text table those print;
  * ``missing_model_message(role_or_filename, folder)`` -> the text every loader's "file not found"
    error should carry, so a user always lands on the same table (reading a file that IS there, and
    the corrupt / unsafe / wrong-model messages, live in core/state_dict.py);
  * ``models_markdown()`` -> docs/MODELS.md (core/model_docs.py; a test keeps the two in sync).
The table's names (``MODEL_TABLE``, ``ModelSpec``, ``get_spec``, ...) are importable from here too.

Core stays ComfyUI-free: the caller passes ``folder_lookup(folder_key) -> list of directories``
(inside ComfyUI that is ``folder_paths.get_folder_paths``; the scripts read it from a ComfyUI
install in a subprocess). Nothing here downloads anything: the pack never fetches weights at run time.

Pure Python (no torch, no ComfyUI): scripts/check_models.py loads it without the pack.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from .model_docs import MARKDOWN_HEADER, models_markdown
from .model_table import (_BY_KEY, LLLYASVIEL, MODEL_TABLE, OPTIONAL, REQUIRED, WORKFLOWS, ModelSpec, get_spec,
                          lookup_spec)

__all__ = ["FolderLookup", "LLLYASVIEL", "MARKDOWN_HEADER", "MODEL_TABLE", "ModelRow", "ModelSpec", "OPTIONAL", "REQUIRED",
           "WORKFLOWS", "check_models", "find_model", "format_table", "get_spec", "lookup_spec", "missing_model_message",
           "missing_required", "models_markdown"]

FolderLookup = Callable[[str], Sequence[str]]


# --------------------------------------------------------------------------- lookup
@dataclass
class ModelRow:
    """Result of checking one table entry."""

    spec: ModelSpec
    required: bool  # required for the checked workflow(s), after ``required_with``
    path: Optional[str]  # the file found, or None
    searched: list[str] = field(default_factory=list)  # directories looked in

    @property
    def present(self) -> bool:
        return self.path is not None

    @property
    def status(self) -> str:
        if self.present:
            return "ok"
        return "MISSING" if self.required else "optional, absent"


def _list_files(directory: str) -> list[str]:
    """Every file below ``directory`` as a '/'-separated relative path (follows links, like ComfyUI)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), directory).replace(os.sep, "/"))
    return sorted(out)


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def find_model(spec: ModelSpec, folder_lookup: FolderLookup, _cache: Optional[dict] = None) -> tuple[Optional[str], list[str]]:
    """(first file that matches one of ``spec.locations``, directories searched).

    Locations are tried in order (the canonical name first); within a location, directories in the
    order ``folder_lookup`` gives them (ComfyUI's priority order). Globs match the relative path
    case-insensitively; a glob without '/' may match the file at any depth.
    """
    cache = {} if _cache is None else _cache
    searched: list[str] = []
    for folder, pattern in spec.locations:
        for d in _dirs(folder_lookup, folder):
            if d not in searched:
                searched.append(d)
            if not os.path.isdir(d):
                continue
            if not _has_magic(pattern):
                p = os.path.join(d, *pattern.split("/"))
                if os.path.isfile(p):
                    return p, searched
                continue
            files = cache.get(d)
            if files is None:
                files = cache[d] = _list_files(d)
            pat = pattern.lower()
            for rel in files:
                low = rel.lower()
                if any(fnmatch.fnmatchcase(low.rsplit("/", 1)[-1], x.lower()) for x in spec.exclude):
                    continue
                if fnmatch.fnmatchcase(low, pat) or ("/" not in pat and fnmatch.fnmatchcase(low.rsplit("/", 1)[-1], pat)):
                    return os.path.join(d, *rel.split("/")), searched
    return None, searched


def _dirs(folder_lookup: FolderLookup, folder: str) -> list[str]:
    try:
        dirs = folder_lookup(folder)
    except KeyError:  # ComfyUI raises for unregistered keys
        dirs = []
    return [os.path.abspath(d) for d in (dirs or [])]


def _selected(workflow: str | Iterable[str]) -> set[str]:
    wf = {workflow} if isinstance(workflow, str) else set(workflow)
    if "all" in wf:
        wf = set(WORKFLOWS)
    bad = wf - set(WORKFLOWS)
    if bad:
        raise ValueError(f"unknown workflow {sorted(bad)}: use one of {', '.join(WORKFLOWS)} or 'all'")
    return wf


def check_models(folder_lookup: FolderLookup, workflow: str | Iterable[str] = "full",
                 table: Sequence[ModelSpec] = MODEL_TABLE) -> list[ModelRow]:
    """Look for every model the selected workflow(s) use. ``folder_lookup(folder_key)`` returns the
    directories of one ComfyUI model folder (``folder_paths.get_folder_paths``); unknown keys may
    raise KeyError or return []. ``workflow``: "geometry", "full", "eval", "all" or several."""
    wf = _selected(workflow)
    cache: dict = {}
    rows = []
    for spec in table:
        if not wf & set(spec.workflows):
            continue
        path, searched = find_model(spec, folder_lookup, cache)
        rows.append(ModelRow(spec, spec.need == REQUIRED or bool(wf & set(spec.required_in)), path, searched))
    present = {r.spec.key for r in rows if r.present}
    for r in rows:  # optional-with: VGG16 is required once PanoHead is there
        if r.spec.required_with and r.spec.required_with in present:
            r.required = True
    return rows


def missing_required(rows: Sequence[ModelRow]) -> list[ModelRow]:
    return [r for r in rows if r.required and not r.present]


def format_table(rows: Sequence[ModelRow], show_paths: bool = True) -> str:
    """A plain-text table (fixed-width columns) plus a summary line and, for each missing model,
    where to get it and where to put it."""
    head = ("status", "role", "file", "folder")
    body = [(r.status, r.spec.role, os.path.basename(r.path) if r.path else r.spec.filename, r.spec.folder) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    widths[1] = min(widths[1], 60)

    def line(cells) -> str:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, widths)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    missing = missing_required(rows)
    out.append("")
    if missing:
        out.append(f"{len(missing)} required model file(s) missing:")
        for r in missing:
            out.append(f"  - {r.spec.role}: put {r.spec.filename!r} into {_where(r)}; get it from {r.spec.source} "
                       f"(licence: {r.spec.licence})")
    else:
        out.append("all required model files found")
    if show_paths:
        found = [r for r in rows if r.present]
        if found:
            out.append("")
            out.append("found:")
            out += [f"  {r.spec.key}: {r.path}" for r in found]
    return "\n".join(out)


def _where(row: ModelRow) -> str:
    dirs = [d for d in row.searched if d.replace(os.sep, "/").rstrip("/").endswith("/" + row.spec.folder)] or row.searched
    return dirs[0] if dirs else f"models/{row.spec.folder}"


# --------------------------------------------------------------------------- loader messages
def missing_model_message(role_or_filename: str, folder: Optional[str] = None, searched: Sequence[str] = (),
                          key: Optional[str] = None) -> str:
    """The one message a loader raises when a model file is not there.

    ``role_or_filename``: a table key ("controlnet_canny"), a role word ("PanoHead") or the file
    name the user picked; ``folder``: the ComfyUI folder key looked in; ``searched``: its directories.
    ``key``: the table entry when the loader knows it (then ``role_or_filename`` is just the name
    shown, e.g. whatever file or path the user gave).
    """
    spec = get_spec(key) if key else lookup_spec(role_or_filename, folder)
    folder = folder or (spec.folder if spec else None)
    where = ", ".join(searched) if searched else (f"models/{folder}" if folder else "the ComfyUI model folders")
    if spec is None:
        head = f"model file {role_or_filename!r} not found in {where}."
        return (head + " See docs/MODELS.md (or run the 'IDSculpt Model Check' node or `python scripts/check_models.py`) "
                "for every model the pack uses and where each one goes.")
    asked = role_or_filename if role_or_filename not in _BY_KEY else spec.filename
    alts = ", ".join(p for f, p in spec.locations[:4] if f == (folder or spec.folder)) or spec.filename
    return (f"{spec.role}: {asked!r} not found in {where}. Put {spec.filename!r} into models/{spec.folder} "
            f"(accepted names include {alts}); get it from {spec.source} (licence: {spec.licence})."
            + (f" Note: {spec.note}." if spec.note else "")
            + " See docs/MODELS.md, or run the 'IDSculpt Model Check' node or `python scripts/check_models.py` to check every model."
            + " `python scripts/install_models.py --comfyui <ComfyUI folder>` fetches, verifies and places the missing files (before a run: nothing downloads during one).")
