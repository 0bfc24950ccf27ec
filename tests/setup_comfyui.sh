#!/usr/bin/env bash
# Reproduce the ComfyUI test environment used by the @pytest.mark.comfy tests (CPU only).
#
#   bash tests/setup_comfyui.sh [COMFYUI_DIR] [VENV_DIR]
#
# COMFYUI_DIR (default $COMFYUI_PATH, else <pack>/.comfy/ComfyUI): an existing ComfyUI checkout. If it does not exist, it is
#   unpacked from COMFYUI_TARBALL (a .tar.gz of a ComfyUI tree) when set; else, if
#   COMFYUI_GIT_DIR names a ComfyUI git directory (e.g. a bare mirror), the tree at its HEAD is
#   exported there file by file (a partial mirror may lack a few large blobs: they are listed, and
#   none of them is needed to run ComfyUI on CPU).
# VENV_DIR (default: <COMFYUI_DIR>/../comfyvenv): the venv created for it. This is where the test
#   harness looks for ComfyUI's Python when IDSCULPT_COMFY_PYTHON is not set.
set -euo pipefail
PACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMFY="${1:-${COMFYUI_PATH:-$PACK_DIR/.comfy/ComfyUI}}"
VENV="${2:-$(dirname "$COMFY")/comfyvenv}"
PY="${PYTHON:-python3}"

if [ ! -f "$COMFY/main.py" ] && [ -n "${COMFYUI_TARBALL:-}" ]; then
  # a .tar.gz whose top folder is the ComfyUI tree (e.g. made with tar -czf comfy.tgz ComfyUI)
  mkdir -p "$COMFY"
  tar -xzf "$COMFYUI_TARBALL" -C "$COMFY" --strip-components=1
fi
if [ ! -f "$COMFY/main.py" ]; then
  if [ -z "${COMFYUI_GIT_DIR:-}" ]; then
    echo "No ComfyUI at $COMFY: clone https://github.com/comfyanonymous/ComfyUI there, or set COMFYUI_TARBALL or COMFYUI_GIT_DIR." >&2
    exit 1
  fi
  echo "Exporting ComfyUI from $COMFYUI_GIT_DIR (HEAD) into $COMFY"
  "$PY" - "$COMFYUI_GIT_DIR" "$COMFY" <<'PYEOF'
import os, subprocess, sys
git, dst = sys.argv[1], sys.argv[2]
out = subprocess.run(["git", "-C", git, "ls-tree", "-r", "-z", "HEAD"], capture_output=True, check=True).stdout
missing = []
for entry in filter(None, out.split(b"\0")):
    meta, path = entry.split(b"\t", 1)
    mode, kind, sha = meta.split()
    path = os.path.join(dst, path.decode())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind != b"blob":
        continue  # submodules: ComfyUI has none
    blob = subprocess.run(["git", "-C", git, "cat-file", "blob", sha.decode()], capture_output=True)
    if blob.returncode != 0:
        missing.append(os.path.relpath(path, dst))
        continue
    if mode == b"120000":
        os.symlink(blob.stdout.decode(), path)
        continue
    with open(path, "wb") as f:
        f.write(blob.stdout)
    if mode == b"100755":
        os.chmod(path, 0o755)
print("exported; blobs missing from the mirror:", missing or "none")
PYEOF
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
# ComfyUI imports torchvision at start; torch and torchvision must be a matching pair. On the
# project machines this pair lies on local disk (a CUDA build that also runs on CPU).
PIN="$(mktemp)"; printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION:-2.14.1}" "${TORCHVISION_VERSION:-0.29.1}" > "$PIN"
"$PIP" install -q -r "$PIN"
"$PIP" install -q -r "$COMFY/requirements.txt" requests -c "$PIN"
# The pack's runtime deps and the test tools.
"$PIP" install -q -r "$PACK_DIR/requirements-test.txt" matplotlib \
    "protobuf>=6.31.1,<7" absl-py attrs flatbuffers -c "$PIN"
# insightface wants the GUI opencv-python and mediapipe pins numpy<2: both work without their deps.
"$PIP" install -q --no-deps insightface==2.1 mediapipe==0.10.21
rm -f "$PIN"

echo "Load check: $VENV/bin/python main.py --cpu --quick-test-for-ci"
(cd "$COMFY" && "$VENV/bin/python" main.py --cpu --quick-test-for-ci > /dev/null 2>&1) \
  && echo "ComfyUI loads. Run the comfy tests with:" \
  && echo "  COMFYUI_PATH=$COMFY IDSCULPT_COMFY_PYTHON=$VENV/bin/python $VENV/bin/python -m pytest -q -m comfy tests"
