#!/usr/bin/env bash
# Prepare the GPU machine (no network): install the wheels carried in .wheels/ that its image lacks.
# Usage (from the repo root, on the device): source bench/gpu_env.sh
if [ -d .wheels ]; then
  python -m pip install -q --no-index --no-deps .wheels/*.whl 2>&1 | grep -v -i warning || true
fi
export COMFYUI_PATH="${COMFYUI_PATH:-$PWD/.comfy/ComfyUI}"
export PYTHONUNBUFFERED=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
