"""Run the pack inside a real ComfyUI for tests: find it, start it headless on CPU, talk HTTP.

Two ways to test against ComfyUI:

* **Server** (:class:`ComfyServer`): ``main.py --cpu`` in a subprocess, launched with *ComfyUI's*
  Python (its venv has torch + torchvision + ComfyUI's requirements), so the test process itself
  can be any Python with ``pytest`` (only the standard library is used to talk to the server).
  Every path ComfyUI writes to is temporary: ``--base-directory`` (input/, output/, temp/, user/),
  an in-memory database, and an ``--extra-model-paths-config`` YAML that adds a temporary
  custom_nodes dir holding a symlink to this repo (named ``ComfyUI-IDSculpt``, as users install it)
  and temporary model folders.
* **In-process** (:func:`import_comfy_inprocess`): ``import comfy`` into the test interpreter to call
  a node's ``execute`` directly. Needs pytest to run with a Python that can import ComfyUI.

Discovery (see docs/COMFYUI_TESTING.md):

* ComfyUI: ``COMFYUI_PATH``; else the ComfyUI checkout whose ``custom_nodes/`` holds this repo.
* Its Python: ``IDSCULPT_COMFY_PYTHON``; else a venv next to or inside the checkout
  (``<COMFYUI_PATH>/../comfyvenv``, ``<COMFYUI_PATH>/venv``, ``<COMFYUI_PATH>/.venv``, the portable
  build's ``python_embeded``); else the Python running the tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The HTTP helpers both launchers share live in scripts/comfy_server.py (standard library only).
if os.path.join(ROOT, "scripts") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
import comfy_server  # noqa: E402
from comfy_server import format_validation_error  # noqa: E402

PACK_NAME = "ComfyUI-IDSculpt"
NODE_PREFIX = "IDSculpt"
#: Model folders created (empty) for every test server; tests drop tiny model files in them.
MODEL_FOLDERS = ("checkpoints", "controlnet", "ipadapter", "insightface", "vae", "clip_vision", "upscale_models", "idsculpt")
ENABLE_HINT = (
    "no ComfyUI found: set COMFYUI_PATH=<ComfyUI checkout> (and IDSCULPT_COMFY_PYTHON=<its venv python> "
    "unless <checkout>/../comfyvenv exists) to run the ComfyUI tests; see docs/COMFYUI_TESTING.md"
)


# --------------------------------------------------------------------------- discovery
def _is_comfy_checkout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))


def find_comfyui() -> Optional[str]:
    """The ComfyUI checkout to test against, or None.

    ``COMFYUI_PATH`` wins (it must be a checkout: a wrong value is an error, not a silent skip);
    else this repo's location when it is installed as ``<ComfyUI>/custom_nodes/<pack>``.
    """
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = os.path.abspath(os.path.expanduser(env))
        if not _is_comfy_checkout(path):
            raise RuntimeError(f"COMFYUI_PATH={env!r} is not a ComfyUI checkout (no main.py and comfy/ there)")
        return path
    for root in {ROOT, os.path.realpath(ROOT)}:
        parent = os.path.dirname(root)
        if os.path.basename(parent) == "custom_nodes" and _is_comfy_checkout(os.path.dirname(parent)):
            return os.path.dirname(parent)
    return None


def find_comfy_python(comfy_path: str) -> str:
    """The Python that runs ComfyUI (see the module docstring for the search order)."""
    env = os.environ.get("IDSCULPT_COMFY_PYTHON")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise RuntimeError(f"IDSCULPT_COMFY_PYTHON={env!r} is not an executable file")
        return env
    parent = os.path.dirname(comfy_path)
    for candidate in (
        os.path.join(parent, "comfyvenv", "bin", "python"),
        os.path.join(comfy_path, "venv", "bin", "python"),
        os.path.join(comfy_path, ".venv", "bin", "python"),
        os.path.join(parent, "python_embeded", "python.exe"),
        os.path.join(comfy_path, "venv", "Scripts", "python.exe"),
    ):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def comfyui_version(comfy_path: str) -> str:
    """``comfyui_version.py``'s version string (and the git commit when the checkout has one)."""
    version = "unknown"
    try:
        with open(os.path.join(comfy_path, "comfyui_version.py"), encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("__version__"):
                    version = line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", comfy_path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0 and commit.stdout.strip():
            version += f" ({commit.stdout.strip()})"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def pack_import_errors(log: str) -> list[str]:
    """Lines of a ComfyUI log that say our pack (or one of its node files) failed to import."""
    bad = []
    for line in log.splitlines():
        if PACK_NAME in line and ("IMPORT FAILED" in line or "Cannot import" in line):
            bad.append(line.strip())
        elif "IDSculpt: could not import" in line:
            bad.append(line.strip())
    return bad


# --------------------------------------------------------------------------- sandbox
class ComfySandbox:
    """Temporary dirs for one ComfyUI run: base dir (input/output/temp/user), models, custom_nodes.

    ``custom_nodes/ComfyUI-IDSculpt`` is a symlink to this repo, so ComfyUI imports the pack under
    the name users install it with, and edits in the repo are what runs.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.base = os.path.join(self.root, "base")
        self.input_dir = os.path.join(self.base, "input")
        self.output_dir = os.path.join(self.base, "output")
        self.temp_dir = os.path.join(self.base, "temp")
        self.user_dir = os.path.join(self.base, "user")
        self.models_dir = os.path.join(self.root, "models")
        self.custom_nodes = os.path.join(self.root, "custom_nodes")
        self.front_end = os.path.join(self.root, "front_end")  # empty: no web UI needed for the API
        self.yaml_path = os.path.join(self.root, "extra_model_paths.yaml")
        # base/custom_nodes stays empty (main.py lists it at start-up); the pack comes in through the YAML
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir, os.path.join(self.base, "custom_nodes"),
                  self.custom_nodes, self.front_end):
            os.makedirs(d, exist_ok=True)
        link = os.path.join(self.custom_nodes, PACK_NAME)
        if not os.path.lexists(link):
            os.symlink(ROOT, link, target_is_directory=True)
        # test-only nodes (tests/harness_nodes.py) load beside the pack; ids without the pack's prefix
        shutil.copyfile(os.path.join(ROOT, "tests", "harness_nodes.py"), os.path.join(self.custom_nodes, "idsculpt_harness_nodes.py"))
        lines = ["idsculpt_tests:", f"  custom_nodes: {self.custom_nodes}"]
        for name in MODEL_FOLDERS:
            path = self.model_dir(name)
            os.makedirs(path, exist_ok=True)
            lines.append(f"  {name}: {path}")
        with open(self.yaml_path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    def model_dir(self, name: str) -> str:
        return os.path.join(self.models_dir, name)

    def args(self, front_end: bool = False) -> list[str]:
        """``front_end``: serve ComfyUI's real web UI (the installed comfyui_frontend_package) for browser
        tests; by default an empty ``--front-end-root`` (the HTTP API needs no UI)."""
        return [
            "--cpu",
            "--disable-auto-launch",
            "--base-directory", self.base,
            "--extra-model-paths-config", self.yaml_path,
            *([] if front_end else ["--front-end-root", self.front_end]),
            "--database-url", "sqlite:///:memory:",
        ]


# --------------------------------------------------------------------------- errors
class ComfyPromptError(RuntimeError):
    """A prompt was refused (validation) or failed while running; the message has ComfyUI's text."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


# --------------------------------------------------------------------------- server
class ComfyServer(comfy_server.ComfyServer):
    """A headless ComfyUI (``main.py --cpu``) in a sandbox, serving the HTTP API on a free loopback port.
    Start-up and shutdown are scripts/comfy_server.py's (start-up failures raise its ComfyError, a
    RuntimeError); the requests below parse ComfyUI's JSON errors for the tests."""

    def __init__(self, comfy_path: str, python: str, sandbox: ComfySandbox, startup_timeout: float = 240.0,
                 front_end: bool = False) -> None:
        super().__init__(comfy_path, python, log_path=os.path.join(sandbox.root, "comfyui.log"), startup_timeout=startup_timeout)
        self.front_end = front_end  # True: serve the real web UI (see ComfySandbox.args)
        self.sandbox = sandbox

    def command(self) -> list[str]:
        return [self.python, "main.py", *self.sandbox.args(self.front_end), "--listen", "127.0.0.1", "--port", str(self.port)]

    # ----------------------------------------------------------------- logs
    def log(self) -> str:
        """Everything ComfyUI printed so far (stdout + stderr)."""
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]

    # ----------------------------------------------------------------- HTTP
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:  # 4xx/5xx still carry ComfyUI's JSON error
            raw = exc.read()
            status = exc.code
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode("utf-8", errors="replace")

    def _get(self, path: str, timeout: float = 60.0) -> Any:
        status, payload = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise urllib.error.URLError(f"GET {path} -> HTTP {status}: {payload}")
        return payload

    def object_info(self, node_class: Optional[str] = None) -> dict:
        """``GET /object_info`` (all nodes) or ``/object_info/<node_class>``."""
        if node_class is None:
            return self._get("/object_info")
        return self._get("/object_info/" + urllib.parse.quote(node_class))

    def queue(self, prompt: dict, extra_data: Optional[dict] = None) -> str:
        """``POST /prompt`` with an API-format graph; returns the prompt id. Raises on validation errors."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        status, resp = self._request("POST", "/prompt", body)
        if status != 200 or not isinstance(resp, dict) or "prompt_id" not in resp:
            raise ComfyPromptError(f"ComfyUI refused the prompt (HTTP {status}): {format_validation_error(resp if isinstance(resp, dict) else {'error': resp})}", resp)
        return resp["prompt_id"]

    def history(self, prompt_id: str) -> Optional[dict]:
        """The history entry of a prompt, or None while it is queued/running."""
        payload = self._get("/history/" + prompt_id)
        return (payload or {}).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict:
        """Poll ``/history/<id>`` until the prompt finished; raise :class:`ComfyPromptError` on failure."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "success":
                    return entry
                raise ComfyPromptError(self._execution_error_text(status), entry)
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running prompt {prompt_id}. Log tail:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s. Log tail:\n{self.log_tail()}")
            time.sleep(poll)

    def submit(self, prompt: dict, timeout: float = 300.0, extra_data: Optional[dict] = None) -> dict:
        """Queue an API-format prompt and wait for it; returns its history entry (``outputs``, ``status``)."""
        return self.wait(self.queue(prompt, extra_data), timeout=timeout)

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        """``POST /interrupt``: stop the running prompt (only if it is ``prompt_id``, when given)."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def running(self) -> list[str]:
        """Ids of the prompts running now (``GET /queue``)."""
        q = self._get("/queue")
        return [item[1] for item in q.get("queue_running", [])]

    def free(self, unload_models: bool = True) -> None:
        """``POST /free``: unload models between tests that load big ones."""
        self._request("POST", "/free", {"unload_models": unload_models, "free_memory": True})

    @staticmethod
    def _execution_error_text(status: dict) -> str:
        for kind, msg in status.get("messages", []):
            if kind == "execution_error":
                return (f"node {msg.get('node_id')} ({msg.get('node_type')}) failed: "
                        f"{msg.get('exception_type')}: {msg.get('exception_message')}\n"
                        + "".join(msg.get("traceback") or [])[-3000:])
            if kind == "execution_interrupted":
                return f"prompt interrupted at node {msg.get('node_id')} ({msg.get('node_type')})"
        return f"prompt failed: {json.dumps(status)[:2000]}"

    # ----------------------------------------------------------------- helpers
    def output_path(self, ui_file: dict) -> str:
        """Absolute path of a ``{"filename", "subfolder", "type"}`` UI result."""
        base = {"output": self.sandbox.output_dir, "temp": self.sandbox.temp_dir, "input": self.sandbox.input_dir}[ui_file.get("type", "output")]
        return os.path.join(base, ui_file.get("subfolder", ""), ui_file["filename"])

    def node_ids(self, prefix: str = NODE_PREFIX) -> list[str]:
        return sorted(k for k in self.object_info() if k.startswith(prefix))


def quick_test(comfy_path: str, python: str, sandbox: ComfySandbox, timeout: float = 300.0) -> tuple[int, str]:
    """``main.py --cpu --quick-test-for-ci`` with the pack: (exit code, log)."""
    cmd = [python, "main.py", *sandbox.args(), "--quick-test-for-ci"]
    proc = subprocess.run(cmd, cwd=comfy_path, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc.returncode, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- in-process
def import_comfy_inprocess(comfy_path: str, sandbox: Optional[ComfySandbox] = None):
    """Make ``comfy``, ``comfy_api`` and ``folder_paths`` importable here, on CPU.

    ComfyUI's dir goes first on sys.path: ``python -m pytest`` puts the repo root on sys.path,
    and the pack's ``nodes/`` package would otherwise shadow ComfyUI's top-level ``nodes.py``.
    ``args.cpu`` must be set before ``comfy.model_management`` is imported (it picks the device at
    import). Returns the ``folder_paths`` module (pointed at the sandbox's dirs when given).
    Raises ImportError when this interpreter cannot import ComfyUI.
    """
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    try:
        return _import_comfy(comfy_path, sandbox)
    except BaseException:
        # leave this interpreter as it was, so a failed import cannot shadow modules for other tests
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            del sys.modules[name]
        raise


def _import_comfy(comfy_path: str, sandbox: Optional[ComfySandbox]):
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    # CPU unless IDSCULPT_INPROCESS_GPU=1 (on the GPU machine: CUDA-only failures, e.g. weights moved outside
    # inference mode, never show on the CPU, where moving a tensor to the CPU is a no-op)
    comfy.cli_args.args.cpu = os.environ.get("IDSCULPT_INPROCESS_GPU", "") != "1"
    comfy.cli_args.args.disable_metadata = False
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import comfy.utils  # noqa: F401
    import folder_paths

    if not os.path.realpath(folder_paths.__file__).startswith(os.path.realpath(comfy_path)):
        raise ImportError(f"folder_paths resolved to {folder_paths.__file__}, not ComfyUI's at {comfy_path}")
    if sandbox is not None:
        folder_paths.set_output_directory(sandbox.output_dir)
        folder_paths.set_input_directory(sandbox.input_dir)
        folder_paths.set_temp_directory(sandbox.temp_dir)
        isolate_model_folders(folder_paths, sandbox)
        for name in MODEL_FOLDERS:
            folder_paths.add_model_folder_path(name, sandbox.model_dir(name), is_default=True)
    import comfy_api.latest  # noqa: F401

    return folder_paths


def isolate_model_folders(folder_paths, sandbox: ComfySandbox) -> None:
    """Point every model folder under the checkout's ``models/`` at the sandbox's, as ``--base-directory``
    does for the server: in-process tests then never see (nor depend on) models the user installed.
    (The server still reads a ``extra_model_paths.yaml`` in the checkout itself: ComfyUI has no switch for it.)"""
    old = os.path.abspath(folder_paths.models_dir)
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        if name == "configs":  # ComfyUI's own model configs (yaml), not user models
            continue
        moved = [sandbox.models_dir + p[len(old):] if os.path.abspath(p).startswith(old + os.sep) else p for p in paths]
        folder_paths.folder_names_and_paths[name] = (moved, exts)
    folder_paths.models_dir = sandbox.models_dir
    folder_paths.filename_list_cache.clear()


def run_node(node_cls, hidden: Optional[dict] = None, **inputs):
    """Run a V3 node's ``execute`` as ComfyUI does: on a class clone with hidden inputs, under
    ``torch.inference_mode()``; returns the ``io.NodeOutput``."""
    import asyncio
    import inspect

    import torch

    clone = node_cls.PREPARE_CLASS_CLONE(hidden or {})
    with torch.inference_mode():
        if inspect.iscoroutinefunction(clone.execute):
            return asyncio.run(clone.EXECUTE_NORMALIZED_ASYNC(**inputs))
        return clone.EXECUTE_NORMALIZED(**inputs)


def clean_dir(path: str) -> None:
    """Empty a sandbox folder between tests (keeps the folder)."""
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
