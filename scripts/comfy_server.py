"""Start a headless ComfyUI and drive it over its HTTP + websocket API (standard library only).

Used by scripts/run_pipeline.py and bench/bench_pipeline.py; the test harness (tests/comfy_harness.py)
subclasses :class:`ComfyServer` to start it in a sandbox. Run as it is, it serves a user's ComfyUI as
installed (its models, input and output folders), optionally with an extra_model_paths.yaml and a
--base-directory.

    server = ComfyServer(comfy_path, python, extra_args=[...]).start()
    name = server.upload_image("portrait.jpg")            # POST /upload/image -> ComfyUI's input/
    prompt_id = server.queue(api_prompt)                  # POST /prompt
    entry = server.wait(prompt_id, on_event=print)        # websocket progress + /history
    data = server.view(file_dict)                         # GET /view: an output file's bytes
    server.stop()
"""
from __future__ import annotations

import base64
import json
import mimetypes
import os
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Optional, Sequence


class ComfyError(RuntimeError):
    """ComfyUI refused a prompt or a node failed; the message carries ComfyUI's own text."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: Optional[subprocess.Popen], timeout: float = 20.0) -> None:
    """Terminate a server process that is still running; kill it when it does not exit in ``timeout`` s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def format_validation_error(resp: Any) -> str:
    if not isinstance(resp, dict):
        return str(resp)[:2000]
    parts = []
    err = resp.get("error")
    if isinstance(err, dict):
        parts.append(f"{err.get('type', '')}: {err.get('message', '')} {err.get('details', '')}".strip())
    elif err:
        parts.append(str(err))
    for node_id, info in (resp.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(parts) or json.dumps(resp)[:2000]


def execution_error_text(status: dict) -> str:
    for kind, msg in status.get("messages", []):
        if kind == "execution_error":
            return (f"node {msg.get('node_id')} ({msg.get('node_type')}) failed: {msg.get('exception_type')}: "
                    f"{msg.get('exception_message')}")
        if kind == "execution_interrupted":
            return f"interrupted at node {msg.get('node_id')} ({msg.get('node_type')})"
    return f"prompt failed: {json.dumps(status)[:2000]}"


# --------------------------------------------------------------------------- websocket (client, RFC 6455 subset)
class WebSocket:
    """Just enough of a websocket client for ComfyUI's /ws: text frames in, pings answered.

    Server frames are unmasked; binary frames (live preview JPEGs) are returned as bytes and
    usually ignored by callers."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        path = u.path + (("?" + u.query) if u.query else "")
        req = (f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        header, self._buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in header.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {header[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("websocket closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self, timeout: Optional[float] = None) -> Optional[str | bytes]:
        """Next message (str for text, bytes for binary); None on timeout."""
        self.sock.settimeout(timeout)
        try:
            message, opcode = b"", None
            while True:
                b0, b1 = self._read(2)
                fin, op, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._read(8))[0]
                mask = self._read(4) if b1 & 0x80 else None
                data = self._read(n)
                if mask:
                    data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
                if op == 0x9:  # ping
                    self._send(0xA, data)
                    continue
                if op == 0x8:
                    raise ConnectionError("websocket closed by server")
                if op in (0x1, 0x2):
                    opcode, message = op, data
                elif op == 0x0:
                    message += data
                if fin and opcode is not None:
                    return message.decode("utf-8", errors="replace") if opcode == 0x1 else message
        except socket.timeout:
            return None

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------- server
class ComfyServer:
    """A ComfyUI ``main.py`` subprocess (or an already running server when ``url`` is given)."""

    def __init__(self, comfy_path: Optional[str] = None, python: Optional[str] = None, extra_args: Sequence[str] = (),
                 log_path: Optional[str] = None, url: Optional[str] = None, startup_timeout: float = 300.0,
                 own_session: bool = False) -> None:
        self.comfy_path, self.python = comfy_path, python
        self.extra_args = list(extra_args)
        self.port = free_port() if url is None else None
        self.url = url.rstrip("/") if url else f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.own_session = own_session  # the server outlives this process (bench_pipeline.py --detach-after)
        self.client_id = uuid.uuid4().hex
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None

    def command(self) -> list[str]:
        return [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch", *self.extra_args]

    def start(self) -> "ComfyServer":
        if self.port is None:  # external server: just check it answers
            self.get("/system_stats", timeout=30)
            return self
        self._log_fh = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), cwd=self.comfy_path, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=self.own_session)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during start-up (python: {self.python}); "
                                 f"log:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=10)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.proc)
        if self._log_fh not in (None, subprocess.DEVNULL):
            self._log_fh.close()
        self._log_fh = None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path or not os.path.isfile(self.log_path):
            return "(no log)"
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", errors="replace")[-chars:]

    # ----------------------------------------------------------------- HTTP
    def request(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None,
                timeout: float = 60.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str, timeout: float = 60.0) -> Any:
        status, raw = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise urllib.error.URLError(f"GET {path} -> HTTP {status}")
        return json.loads(raw) if raw else None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def upload_image(self, path: str, name: Optional[str] = None, overwrite: bool = True) -> str:
        """Copy a file into ComfyUI's input folder (``POST /upload/image``); returns the name LoadImage takes."""
        boundary = uuid.uuid4().hex
        fname = name or os.path.basename(path)
        ctype = mimetypes.guess_type(fname)[0] or "application/octet-stream"
        with open(path, "rb") as fh:
            data = fh.read()
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{fname}\"\r\n"
                 f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"]
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\n{str(overwrite).lower()}\r\n".encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, raw = self.request("POST", "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ComfyError(f"upload of {path} failed (HTTP {status}): {raw[:500]!r}")
        info = json.loads(raw)
        return "/".join(p for p in (info.get("subfolder", ""), info["name"]) if p)

    def view(self, file: dict) -> bytes:
        """Bytes of an output file given as ``{"filename", "subfolder", "type"}`` (``GET /view``)."""
        q = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""), "type": file.get("type", "output")})
        status, raw = self.request("GET", "/view?" + q, timeout=300)
        if status != 200:
            raise ComfyError(f"could not fetch {file} from ComfyUI (HTTP {status})")
        return raw

    def queue(self, prompt: dict, extra_data: Optional[dict] = None) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        status, raw = self.request("POST", "/prompt", json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            resp = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            resp = raw.decode("utf-8", errors="replace")
        if status != 200 or not isinstance(resp, dict) or "prompt_id" not in resp:
            raise ComfyError(f"ComfyUI refused the workflow (HTTP {status}): {format_validation_error(resp)}")
        return resp["prompt_id"]

    def history(self, prompt_id: str) -> Optional[dict]:
        return (self.get("/history/" + prompt_id) or {}).get(prompt_id)

    def interrupt(self) -> None:
        self.request("POST", "/interrupt", b"{}", {"Content-Type": "application/json"})

    def connect_ws(self) -> Optional[WebSocket]:
        """Open /ws for this client id (before queueing, so no message is missed); None if it fails."""
        u = urllib.parse.urlparse(self.url)
        try:
            return WebSocket(f"ws://{u.hostname}:{u.port}/ws?clientId={self.client_id}")
        except (OSError, ConnectionError):
            return None

    def wait(self, prompt_id: str, ws: Optional[WebSocket] = None, on_event: Optional[Callable[[str, dict], None]] = None,
             timeout: Optional[float] = None) -> dict:
        """Wait for the prompt to finish, passing websocket events (type, data) of this prompt to
        ``on_event``; returns the history entry or raises :class:`ComfyError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_poll = 0.0
        while True:
            if ws is not None:
                try:
                    msg = ws.recv(timeout=1.0)
                except (OSError, ConnectionError):
                    ws = None
                    msg = None
                if isinstance(msg, str):
                    try:
                        ev = json.loads(msg)
                    except json.JSONDecodeError:
                        ev = {}
                    data = ev.get("data") or {}
                    if on_event and data.get("prompt_id") in (None, prompt_id):
                        on_event(ev.get("type", ""), data)
            else:
                time.sleep(0.5)
            now = time.monotonic()
            if now - last_poll > 1.0:
                last_poll = now
                entry = self.history(prompt_id)
                if entry is not None and entry.get("status", {}).get("completed") is not None:
                    if entry["status"].get("status_str") == "success":
                        return entry
                    raise ComfyError(execution_error_text(entry["status"]))
                if self.proc is not None and self.proc.poll() is not None:
                    raise ComfyError(f"ComfyUI died while running the workflow; log:\n{self.log_tail()}")
            if deadline is not None and now > deadline:
                raise ComfyError(f"the workflow did not finish within {timeout:.0f} s")
