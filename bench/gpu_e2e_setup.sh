#!/usr/bin/env bash
# Prepare the offline GPU machine for bench/bench_pipeline.py (a ComfyUI server run of the workflows).
# Usage, from the repo root on the device, in back-to-back calls (one call carries at most 64 MiB, the
# repo included, and the machine stays warm 30 s between calls):
#   call 0 (carry .wheels_x): source bench/gpu_e2e_setup.sh      -> fonttools (matplotlib's; moved out of
#          .wheels_extra when the repo grew past what one call carries beside it)
#   call 1 (carry .wheels_extra): source bench/gpu_e2e_setup.sh   -> mediapipe 0.10.21, matplotlib (+ contourpy,
#          cycler, kiwisolver, pyparsing), onnx, protobuf 6, absl-py, attrs, flatbuffers
#   call 2 (carry .wheels .comfy .e2e): source bench/gpu_e2e_setup.sh WORK  -> ComfyUI's wheels (torchsde, av,
#          pydantic + pydantic-core/-settings, alembic, sqlalchemy, ...), kornia, spandrel, trimesh, xatlas,
#          fast-simplification, insightface, diffrp-nvdiffrast (nvdiffrast, built once by bench/warm_kernels.py), the
#          InsightFace stand-in (onnx export needs onnx, so it is built on the CPU machine and carried) copied
#          into WORK/models/insightface; WORK is the folder later passed to bench_pipeline.py --work, outside
#          the repo (the repo travels to the device on every call; the models there would not fit).
# Installs persist while the machine stays held.
E2E_WORK="${1:-}"
if [ -d .wheels_x ]; then
  python -m pip install -q --no-index --no-deps .wheels_x/*.whl 2>&1 | grep -v -i warn || true
fi
if [ -d .wheels_extra ]; then
  python -m pip install -q --no-index --no-deps --force-reinstall .wheels_extra/*.whl 2>&1 | grep -v -i warn || true
fi
if [ -d .wheels ]; then
  source bench/gpu_env.sh
fi
if [ -d .e2e ]; then
  ls .e2e/*.whl >/dev/null 2>&1 && { python -m pip install -q --no-index --no-deps .e2e/*.whl 2>&1 | grep -v -i warn || true; }
  if [ -d .e2e/insightface ]; then
    if [ -z "$E2E_WORK" ]; then
      echo "gpu_e2e_setup.sh: .e2e/insightface needs the bench work folder: source bench/gpu_e2e_setup.sh WORK" >&2
    else
      mkdir -p "$E2E_WORK/models/insightface" && cp -r .e2e/insightface/* "$E2E_WORK/models/insightface/"
    fi
  fi
fi
export COMFYUI_PATH="${COMFYUI_PATH:-$PWD/.comfy/ComfyUI}" PYTHONUNBUFFERED=1
# once per machine, as once per install for a user: nvdiffrast's CUDA plugin and the Triton walk kernel
if [ -d .wheels ]; then python bench/warm_kernels.py 2>&1 | tail -3; fi
python - <<'PY'
import importlib
for m in ("mediapipe", "matplotlib", "onnx", "insightface", "kornia", "torchsde", "av", "nvdiffrast"):
    try:
        importlib.import_module(m)
        print("have", m, end="; ")
    except Exception as e:  # noqa: BLE001
        print("MISSING", m, type(e).__name__, end="; ")
print()
PY
