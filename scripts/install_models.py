"""Fetch, verify, convert and place every model file an IDSculpt workflow needs (run once, before ComfyUI).

    <ComfyUI's python> scripts/install_models.py --comfyui /path/to/ComfyUI [--workflow full|geometry|eval|all]
        [--dry-run] [--accept-licence NAME ...] [--optional] [--extra-model-paths-config YAML] [--base-directory DIR]

What it does, for each file the model check (core/models.py, scripts/check_models.py) reports missing
for the chosen workflow (plus the absent optional ones with ``--optional``):

* downloads it from the public source named in the model table, over HTTPS:
  - Hugging Face hub files through ``huggingface_hub.hf_hub_download`` (it honours ``HF_ENDPOINT``,
    ``HF_TOKEN`` / ``huggingface-cli login`` and the hub cache ``HF_HOME`` / ``HF_HUB_CACHE``, shows a
    progress bar and resumes a cut download), then links or copies it out of the cache;
  - other URLs (the torchvision model zoo, insightface's release zip, MediaPipe's model, PyPI) with
    this script's own downloader: progress bar, resume with an HTTP Range request, a few retries;
* verifies size and SHA-256 where the table knows them (torchvision's files: the hash prefix in the
  file name). Where no hash is published yet, the digest seen is written to the lock file
  (``<models>/idsculpt/install_models.lock.json``, with the hub commit) and later installs are checked
  against it, and it says so;
* places it: buffalo_l.zip unpacked into ``models/insightface/models/buffalo_l/``; HumanNorm's diffusers
  folders converted to single-file SD1.5 checkpoints in ``models/checkpoints/`` (core/convert_diffusers.py
  with ComfyUI's own key maps); the LPIPS linear weights copied out of the ``lpips`` package (or its
  PyPI wheel when the package is not installed).

Non-commercial licences (insightface, IP-Adapter FaceID) are shown and need ``--accept-licence NAME``
once (remembered in the lock file). PanoHead sits behind a Google Drive page no script should scrape:
the exact manual steps are printed instead. Nothing here runs during a ComfyUI run.

Needs ComfyUI's Python (torch, safetensors, huggingface_hub: ComfyUI's transformers already pulls it in).
Exit code 0 when every required file of the workflow is there afterwards (or, with --dry-run, always),
1 otherwise, 2 on bad arguments. ``IDSCULPT_DOWNLOAD_MIRROR=<base URL>`` fetches the non-hub files
from ``<base>/<host>/<path>`` instead (a mirror keeping the hosts' paths; the tests use one).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import check_models  # noqa: E402  (scripts/check_models.py: folder resolution shared with the model check)

LOCK_NAME = "install_models.lock.json"
CHUNK = 1 << 20
#: the lpips release whose wheel carries the LPIPS v0.1 linear weights (sha256 of the PyPI file)
LPIPS_WHEEL = ("lpips", "0.1.4", "lpips-0.1.4-py3-none-any.whl", "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e")
PANOHEAD_DRIVE = "https://drive.google.com/drive/folders/1m517-F1NCTGA159dePs5R5qj02svtX1_"

#: --accept-licence NAME -> what the user accepts (shown before anything is fetched)
LICENCES = {
    "insightface": "insightface's pretrained models (buffalo_l: SCRFD detector, ArcFace recogniser) are released for "
                   "non-commercial research purposes only (https://github.com/deepinsight/insightface#license).",
    "ipadapter-faceid": "IP-Adapter FaceID (h94/IP-Adapter-FaceID) is released for non-commercial research use only "
                        "(it is trained on insightface's face embeddings; see its model card).",
    "panohead": "PanoHead's pretrained model is released under CC BY-NC 4.0 (non-commercial).",
}


class InstallError(RuntimeError):
    """A file could not be fetched, verified or placed; the message names the cause."""


def models_module():
    return check_models.load_models_module()


# --------------------------------------------------------------------------- plan
@dataclass
class Item:
    """One table row to install."""

    row: object  # core.models.ModelRow
    dest: str  # the canonical file's path in the first directory of its ComfyUI folder

    @property
    def spec(self):
        return self.row.spec


def dest_path(spec, folders: dict) -> str:
    dirs = folders.get(spec.folder) or []
    if not dirs:
        raise InstallError(f"ComfyUI has no folder for {spec.folder!r}")
    return os.path.join(dirs[0], *spec.filename.split("/"))


def plan(rows: Sequence, folders: dict, optional: bool = False) -> list[Item]:
    """Rows to install: those the model check reports MISSING (required and absent), plus the absent
    optional ones with ``optional``."""
    return [Item(r, dest_path(r.spec, folders)) for r in rows if not r.present and (r.required or optional)]


def describe(item: Item) -> str:
    s = item.spec
    kind, _, arg = s.fetch.partition(":")
    if kind == "hf":
        how = "Hugging Face {} / {}".format(*arg.split(":", 1))
    elif kind == "hf-diffusers":
        how = f"Hugging Face {arg} (diffusers folder, converted to one checkpoint)"
    elif kind == "url":
        how = arg
    elif kind == "zip":
        how = f"{arg.rsplit(':', 1)[0]} (unpacked)"
    elif kind == "lpips":
        how = f"{arg} of the lpips package (or its PyPI wheel)"
    else:
        how = "manual download" if kind == "manual" else f"no automatic source: {s.source}"
    gate = f"; needs --accept-licence {s.licence_gate}" if s.licence_gate and s.fetch != "manual" else ""
    return f"{s.key}: {item.dest}  <- {how} (licence: {s.licence}{gate})"


# --------------------------------------------------------------------------- lock file
class Lock:
    """Digests seen (trust on first use where the table has none), hub commits, accepted licences."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data = {"files": {}, "accepted_licences": []}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                self.data.update(json.load(fh))

    def entry(self, name: str) -> dict:
        return self.data["files"].get(name, {})

    def record(self, name: str, **fields) -> None:
        self.data["files"].setdefault(name, {}).update(fields)
        self.save()

    def accepted(self, licence: str) -> bool:
        return licence in self.data["accepted_licences"]

    def accept(self, licence: str) -> None:
        if licence not in self.data["accepted_licences"]:
            self.data["accepted_licences"].append(licence)
            self.save()

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- verification
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str, name: str, lock: Lock, sha256: str = "", size: int = 0, log: Callable = print, **record) -> str:
    """Check ``path`` against the known size / SHA-256 (the table's, else the lock file's); with none
    known, record the digest seen. Raises InstallError on a mismatch (the caller removes the file)."""
    actual_size = os.path.getsize(path)
    if size and actual_size != size:
        raise InstallError(f"{name}: {actual_size} bytes, expected {size}: refused (not placed)")
    digest = sha256_file(path)
    known = sha256 or lock.entry(name).get("sha256", "")
    source = "the model table" if sha256 else f"the lock file {lock.path} (first install)"
    if known and not digest.startswith(known.lower()):
        raise InstallError(f"{name}: SHA-256 {digest} does not match {known} from {source}: refused (not placed). "
                           "A changed or corrupted download; if the publisher really changed the file, delete its "
                           "entry from the lock file and run again.")
    if not known:
        log(f"  {name}: no published SHA-256; recorded the one seen ({digest}) in {lock.path}: later installs are checked against it")
    lock.record(name, sha256=digest, size=actual_size, **record)
    return digest


# --------------------------------------------------------------------------- HTTPS downloads
def mirrored(url: str) -> str:
    """``IDSCULPT_DOWNLOAD_MIRROR``: fetch https://host/path from <mirror>/host/path instead."""
    mirror = os.environ.get("IDSCULPT_DOWNLOAD_MIRROR", "").rstrip("/")
    if not mirror:
        return url
    u = urllib.parse.urlsplit(url)
    return f"{mirror}/{u.netloc}{u.path}" + (f"?{u.query}" if u.query else "")


def _check_scheme(url: str) -> None:
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https" and u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise InstallError(f"refusing to download over {u.scheme}: {url} (HTTPS only; plain HTTP only from this machine)")


def _progress(total: Optional[int], initial: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr)
    except ImportError:  # a plain counter
        class _Bar:
            def __init__(self):
                self.n, self.last = initial, 0.0

            def update(self, k):
                self.n += k
                if time.time() - self.last > 2:
                    self.last = time.time()
                    print(f"  {desc}: {self.n >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""), file=sys.stderr)

            def close(self):
                pass

        return _Bar()


def download_url(url: str, part: str, expected_size: int = 0, retries: int = 4, timeout: float = 60.0) -> str:
    """Download ``url`` into ``part``, resuming what ``part`` already holds with an HTTP Range request
    (a cut connection is retried from where it stopped). Returns ``part``."""
    url = mirrored(url)
    _check_scheme(url)
    os.makedirs(os.path.dirname(os.path.abspath(part)), exist_ok=True)
    last_error: Optional[Exception] = None
    for attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.isfile(part) else 0
        if expected_size and have == expected_size:
            return part
        req = urllib.request.Request(url, headers={"User-Agent": "ComfyUI-IDSculpt install_models"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = resp.status
                if have and status == 200:  # the server ignored the Range: start again
                    have = 0
                length = resp.headers.get("Content-Length")
                total = (int(length) + have) if length is not None else None
                bar = _progress(total, have, os.path.basename(part)[:-5] if part.endswith(".part") else os.path.basename(part))
                try:
                    with open(part, "ab" if have else "wb") as fh:
                        got = 0
                        while True:
                            block = resp.read(CHUNK)
                            if not block:
                                break
                            fh.write(block)
                            got += len(block)
                            bar.update(len(block))
                finally:
                    bar.close()
                if length is not None and got != int(length):
                    raise InstallError(f"connection closed after {got} of {length} bytes")
            return part
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # asked past the end: the part file is complete or wrong; verification decides
                return part
            if exc.code in (401, 403, 404, 410):
                raise InstallError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            last_error = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, InstallError) as exc:
            last_error = exc  # a cut connection (IncompleteRead, RemoteDisconnected, reset): resume from what arrived
        if attempt < retries:
            print(f"  download of {url} interrupted ({type(last_error).__name__}: {last_error}); resuming", file=sys.stderr)
            time.sleep(min(2 ** attempt, 10) * 0.25)
    raise InstallError(f"{url}: download failed after {retries + 1} attempts: {last_error}")


def fetch_url_to(url: str, dest: str, name: str, lock: Lock, sha256: str = "", size: int = 0, log: Callable = print) -> str:
    """Download, verify, then move into place (nothing half-written is ever at ``dest``)."""
    part = dest + ".part"
    download_url(url, part, size)
    try:
        verify(part, name, lock, sha256, size, log, source=url)
    except InstallError:
        os.remove(part)
        raise
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- Hugging Face hub
def _hub():
    try:
        import huggingface_hub
    except ImportError as exc:
        raise InstallError("huggingface_hub is not installed in this Python: `pip install huggingface_hub` "
                           "(ComfyUI's Python normally has it: transformers depends on it)") from exc
    return huggingface_hub


def _commit_of(cached_path: str) -> str:
    parts = os.path.normpath(cached_path).split(os.sep)
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else ""


def _forget_cached(cached_path: str) -> None:
    """Remove a refused file from the hub cache (the snapshot link and its blob) so a rerun fetches it anew."""
    real = os.path.realpath(cached_path)
    for p in {cached_path, real}:
        with contextlib.suppress(OSError):
            os.remove(p)


def hub_file(repo: str, filename: str, name: str, lock: Lock, revision: str = "", sha256: str = "", size: int = 0,
             log: Callable = print) -> str:
    """A hub file in the hub cache, verified; returns its cached path. The revision is the table's pin,
    else the commit recorded at the first install (so a recorded hash stays comparable), else main."""
    hub = _hub()
    rev = revision or lock.entry(name).get("commit") or "main"
    try:
        path = hub.hf_hub_download(repo_id=repo, filename=filename, revision=rev,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as exc:  # network, 404, gated repo without token: name the file and the cause
        raise InstallError(f"{repo}/{filename}@{rev}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    commit = _commit_of(path)
    try:
        verify(path, name, lock, sha256, size, log, source=f"hf:{repo}/{filename}", commit=commit)
    except InstallError:
        _forget_cached(path)
        raise
    return path


def hub_file_any(repo: str, folder: str, candidates: Iterable[str], name_prefix: str, lock: Lock, revision: str = "",
                 log: Callable = print) -> tuple[str, str]:
    """The first of ``candidates`` (file names in ``folder``) the repo has: (cached path, name)."""
    _hub()
    from huggingface_hub.errors import EntryNotFoundError

    tried = []
    for cand in candidates:
        fn = f"{folder}/{cand}"
        try:
            return hub_file(repo, fn, f"{name_prefix}:{fn}", lock, revision, log=log), fn
        except InstallError as exc:
            if isinstance(exc.__cause__, EntryNotFoundError):
                tried.append(fn)
                continue
            raise
    raise InstallError(f"{repo} has none of {', '.join(tried)}")


def place_copy(src: str, dest: str) -> str:
    """Hard-link (same disk: no second copy) or copy ``src`` to ``dest`` atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".part"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.link(os.path.realpath(src), tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- per source kind
def install_hf(spec, dest: str, lock: Lock, log: Callable) -> None:
    repo, filename = spec.fetch.split(":", 1)[1].split(":", 1)
    place_copy(hub_file(repo, filename, spec.key, lock, spec.revision, spec.sha256, spec.size, log), dest)


def comfy_key_maps(comfy_path: str):
    """ComfyUI's diffusers -> LDM maps (imported from the given checkout: torch, no model management)."""
    comfy_path = os.path.abspath(comfy_path)
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    try:
        import comfy.diffusers_convert
        import comfy.utils
    except ImportError as exc:
        raise InstallError(f"converting a diffusers folder needs ComfyUI's Python (torch) and {comfy_path}/comfy: {exc}. "
                           "Run this script with ComfyUI's Python.") from exc
    return comfy.utils.unet_to_diffusers, comfy.diffusers_convert.convert_vae_state_dict


def _convert_module():
    import importlib.util

    name = "idsculpt_core_convert_diffusers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "core", "convert_diffusers.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def install_hf_diffusers(spec, dest: str, lock: Lock, log: Callable, comfy_path: str) -> None:
    """unet/, vae/, text_encoder/ weights + unet/config.json from the hub, converted to one LDM checkpoint."""
    conv = _convert_module()
    repo = spec.fetch.split(":", 1)[1]
    unet_map, vae_convert = comfy_key_maps(comfy_path)
    paths, got, commit = {}, {}, ""
    for component in ("unet", "vae", "text_encoder"):  # read straight from the hub cache: no second copy
        paths[component], got[component] = hub_file_any(repo, component, conv.WEIGHT_NAMES[component], spec.key, lock,
                                                        spec.revision, log)
        commit = _commit_of(paths[component]) or commit
    cfg = hub_file(repo, "unet/config.json", f"{spec.key}:unet/config.json", lock, spec.revision or commit, log=log)
    log(f"  converting {repo} (diffusers) to a single-file SD1.5 checkpoint: {dest}")
    conv.convert_files(paths["unet"], paths["vae"], paths["text_encoder"], cfg, dest + ".conv", unet_map, vae_convert,
                       metadata={"idsculpt_converted_from": f"{repo}@{commit}", **{f"idsculpt_{k}": v for k, v in got.items()}})
    os.replace(dest + ".conv", dest)
    lock.record(spec.key, sha256=sha256_file(dest), size=os.path.getsize(dest), source=f"hf-diffusers:{repo}",
                commit=commit, converted=True)


def install_zip(items: Sequence[Item], lock: Lock, log: Callable) -> None:
    """One release zip covering several rows: downloaded once, unpacked into the rows' folder (a single
    top-level folder in the zip, e.g. ``buffalo_l/``, is dropped so files land where the table looks)."""
    url = items[0].spec.fetch.split(":", 1)[1].rsplit(":", 1)[0]
    target = os.path.dirname(items[0].dest)
    zip_name = os.path.basename(urllib.parse.urlsplit(url).path)
    part_dir = os.path.dirname(target)
    os.makedirs(part_dir, exist_ok=True)
    zpath = os.path.join(part_dir, zip_name)
    download_url(url, zpath + ".part")
    try:
        verify(zpath + ".part", zip_name, lock, log=log, source=url)
        with zipfile.ZipFile(zpath + ".part") as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            tops = {n.split("/", 1)[0] for n in names}
            strip = len(tops) == 1 and all("/" in n for n in names)
            tmp_dir = target + ".part"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            for n in names:
                rel = n.split("/", 1)[1] if strip else n
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise InstallError(f"{zip_name}: unsafe member name {n!r}: refused")
                out = os.path.join(tmp_dir, *rel.split("/"))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with zf.open(n) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
    except (InstallError, zipfile.BadZipFile) as exc:
        with contextlib.suppress(OSError):
            os.remove(zpath + ".part")
        shutil.rmtree(target + ".part", ignore_errors=True)
        raise InstallError(f"{zip_name}: {exc}") from exc
    for it in items:
        member = it.spec.fetch.rsplit(":", 1)[1]
        if not os.path.isfile(os.path.join(tmp_dir, member)):
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise InstallError(f"{zip_name} has no {member} (needed for {it.spec.key})")
    os.makedirs(target, exist_ok=True)
    for rel in check_models.load_models_module()._list_files(tmp_dir):
        out = os.path.join(target, *rel.split("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.replace(os.path.join(tmp_dir, *rel.split("/")), out)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.remove(zpath + ".part")
    for it in items:
        lock.record(it.spec.key, sha256=sha256_file(it.dest), size=os.path.getsize(it.dest), source=url)
    log(f"  unpacked {zip_name} into {target}")


def _lpips_from_package(member: str) -> Optional[str]:
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(os.path.dirname(list(spec.submodule_search_locations)[0]), *member.split("/"))
    return path if os.path.isfile(path) else None


def install_lpips(spec, dest: str, lock: Lock, log: Callable) -> None:
    """Copy the file out of the installed lpips package, else out of lpips' wheel from PyPI."""
    member = spec.fetch.split(":", 1)[1]
    src = _lpips_from_package(member)
    if src:
        log(f"  copying {member} from the installed lpips package")
        place_copy(src, dest + ".src")
        _verify_then_place(dest + ".src", dest, spec, lock, log, f"lpips package: {member}")
        return
    name, version, wheel, wheel_sha = LPIPS_WHEEL
    with urllib.request.urlopen(_json_request(mirrored(f"https://pypi.org/pypi/{name}/{version}/json")), timeout=60) as resp:
        info = json.load(resp)
    files = [u for u in info.get("urls", []) if u.get("filename") == wheel]
    if not files:
        raise InstallError(f"PyPI lists no {wheel} for {name} {version}")
    cache = os.path.join(os.path.dirname(dest), wheel)
    download_url(files[0]["url"], cache + ".part")
    try:
        verify(cache + ".part", wheel, lock, files[0].get("digests", {}).get("sha256", "") or wheel_sha, log=log, source=files[0]["url"])
        if files[0].get("digests", {}).get("sha256", wheel_sha) != wheel_sha:
            raise InstallError(f"PyPI's {wheel} digest differs from the pinned {wheel_sha}: refused")
        with zipfile.ZipFile(cache + ".part") as zf, zf.open(member) as src, open(dest + ".src", "wb") as out:
            shutil.copyfileobj(src, out)
    finally:
        with contextlib.suppress(OSError):
            os.remove(cache + ".part")
    _verify_then_place(dest + ".src", dest, spec, lock, log, f"{wheel}: {member}")


def _verify_then_place(staged: str, dest: str, spec, lock, log, source: str) -> None:
    """Check a staged file against the row's size/hash (or the lock file); only a verified file takes its place."""
    try:
        verify(staged, spec.key, lock, spec.sha256, spec.size, log, source=source)
    except InstallError:
        os.remove(staged)
        raise
    os.replace(staged, dest)


def _json_request(url: str) -> urllib.request.Request:
    _check_scheme(url)
    return urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "ComfyUI-IDSculpt install_models"})


def manual_steps(spec, dest: str) -> str:
    if spec.key == "panohead":
        return "\n".join([
            f"PanoHead ({spec.licence}) is not downloaded by this script: its release sits behind a Google Drive page.",
            f"  1. Open {PANOHEAD_DRIVE} (the `models` folder linked from github.com/SizheAn/PanoHead, 'Getting started')",
            "     and read its licence (CC BY-NC 4.0: non-commercial use only).",
            f"  2. Download the file {spec.filename} from that folder (the other files are not needed).",
            f"  3. Put it at {dest}",
            "  4. Run this installer again: it then fetches VGG16 (the inversion's perceptual loss, required once PanoHead is",
            "     there). The pack converts the .pkl to .safetensors + .json beside it on first use, without running code from it.",
        ])
    return f"{spec.key}: no automatic source; get {spec.filename!r} from {spec.source} and put it at {dest}"


# --------------------------------------------------------------------------- main
def install(items: Sequence[Item], lock: Lock, comfy_path: str, accepted: Sequence[str] = (), log: Callable = print) -> list[str]:
    """Install ``items``; returns the error messages (empty = every item placed)."""
    errors: list[str] = []
    for lic in accepted:
        if lic not in LICENCES:
            raise ValueError(f"--accept-licence {lic!r}: known licences are {', '.join(LICENCES)}")
        lock.accept(lic)
    todo: list[Item] = []
    for it in items:
        s = it.spec
        if s.fetch == "manual" or not s.fetch:
            log(manual_steps(s, it.dest))
            errors.append(f"{s.key}: manual download needed (steps above)")
        elif s.licence_gate and not lock.accepted(s.licence_gate):
            log(f"{s.key}: licence: {LICENCES.get(s.licence_gate, s.licence)}\n  not fetched: rerun with "
                f"--accept-licence {s.licence_gate} to accept it (asked once; remembered in {lock.path})")
            errors.append(f"{s.key}: licence {s.licence_gate} not accepted")
        else:
            todo.append(it)
    zips: dict[str, list[Item]] = {}
    for it in todo:
        kind = it.spec.fetch.split(":", 1)[0]
        if kind == "zip":
            zips.setdefault(it.spec.fetch.rsplit(":", 1)[0], []).append(it)
            continue
        log(f"installing {describe(it)}")
        try:
            if kind == "hf":
                install_hf(it.spec, it.dest, lock, log)
            elif kind == "hf-diffusers":
                install_hf_diffusers(it.spec, it.dest, lock, log, comfy_path)
            elif kind == "url":
                fetch_url_to(it.spec.fetch.split(":", 1)[1], it.dest, it.spec.key, lock, it.spec.sha256, it.spec.size, log)
            elif kind == "lpips":
                install_lpips(it.spec, it.dest, lock, log)
            else:
                raise InstallError(f"unknown source kind {kind!r} in the model table")
        except InstallError as exc:
            log(f"  ERROR {exc}")
            errors.append(str(exc))
    for group in zips.values():
        log("installing " + "; ".join(describe(it) for it in group))
        try:
            install_zip(group, lock, log)
        except InstallError as exc:
            log(f"  ERROR {exc}")
            errors.append(str(exc))
    return errors


def lock_path(folders: dict) -> str:
    dirs = folders.get("idsculpt") or []
    if not dirs:
        raise InstallError("ComfyUI has no 'idsculpt' model folder for the lock file")
    return os.path.join(dirs[0], LOCK_NAME)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Fetch, verify, convert and place the model files of an IDSculpt workflow.")
    ap.add_argument("--comfyui", required=True, help="ComfyUI checkout (the folder with main.py)")
    ap.add_argument("--workflow", default="full", choices=["full", "geometry", "eval", "all"], help="which workflow's models (default full)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be installed (exactly what the model check reports missing) and stop")
    ap.add_argument("--accept-licence", action="append", default=[], metavar="NAME", choices=sorted(LICENCES),
                    help="accept a non-commercial licence (" + ", ".join(LICENCES) + "); remembered in the lock file")
    ap.add_argument("--optional", action="store_true", help="also install the absent optional files (PanoHead's steps, LPIPS weights, evaluation models)")
    ap.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML", help="as passed to ComfyUI (repeatable)")
    ap.add_argument("--base-directory", help="ComfyUI's --base-directory, if it runs with one")
    ap.add_argument("--python", help="ComfyUI's Python for resolving its folders (default: found like scripts/check_models.py)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    models = models_module()
    try:
        folders, how = check_models.comfy_folders(args.comfyui, args.extra_model_paths_config, args.python, args.base_directory)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lookup = check_models.lookup_from(folders)
    rows = models.check_models(lookup, args.workflow)
    items = plan(rows, folders, args.optional)
    print(f"IDSculpt models for workflow '{args.workflow}' (folders from {how}):")
    panohead_absent = [r for r in rows if r.spec.key == "panohead" and not r.present]
    if not items:
        print("nothing to install: every " + ("" if args.optional else "required ") + "file is there")
    elif args.dry_run:
        print(f"would install {len(items)} file(s):")
        for it in items:
            print("  " + describe(it))
    if args.dry_run:
        if panohead_absent and not any(it.spec.key == "panohead" for it in items):
            print("\n(optional) " + manual_steps(panohead_absent[0].spec, dest_path(panohead_absent[0].spec, folders)))
        return 0
    lock = Lock(lock_path(folders))
    errors = install(items, lock, args.comfyui, args.accept_licence) if items else []
    if panohead_absent and not any(it.spec.key == "panohead" for it in items):
        print("\n(optional) " + manual_steps(panohead_absent[0].spec, dest_path(panohead_absent[0].spec, folders)))
    rows = models.check_models(lookup, args.workflow)
    print("\n" + models.format_table(rows, show_paths=False))
    if errors:
        print(f"\n{len(errors)} file(s) not installed:\n  - " + "\n  - ".join(errors))
    return 1 if models.missing_required(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
