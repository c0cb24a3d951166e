#!/usr/bin/env bash
# CUDA shared memory and the pinned-memory gauges on a CUDA machine, in one run (docs/gpu.md has
# the command and the results): tests/frontends/test_cuda_shared_memory.py (the real tritonclient
# with tritonclient.utils.cuda_shared_memory against a `dagserve serve` subprocess, and the
# stand-in tests), the system shared-memory tests, and the GPU test of the pinned-memory gauges.
#
# The GPU machine lacks tritonclient and some of dagserve's dependencies: their wheels travel in
# .device-carry/whl (docs/gpu.md lists them) and are installed into /tmp/site. Logs go to $OUT.
set -uo pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# (and, when the carry also holds prepare_carry.sh's wheels/, those: whl/ may then keep only
# tritonclient and its HTTP client's dependencies, to stay under the 64 MiB a run carries)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(compgen -G ".device-carry/wheels/*.whl") .device-carry/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 - <<'PY'
import cupy, torch, tritonclient, cuda.bindings
rt = cupy.cuda.runtime
print("torch", torch.__version__, "| cupy", cupy.__version__, "| tritonclient", getattr(tritonclient, "__version__", "?"),
      "| cuda.bindings", cuda.bindings.__version__, "| devices", rt.getDeviceCount())
print("cupy runtime has:", {n: hasattr(rt, n) for n in ("ipcOpenMemHandle", "ipcCloseMemHandle", "memcpy",
      "cudaIpcMemLazyEnablePeerAccess", "memcpyDeviceToHost", "memcpyHostToDevice")})
PY
python3 -m pytest tests/frontends/test_cuda_shared_memory.py tests/frontends/test_shared_memory.py \
    "tests/backends/test_gpu.py::test_pinned_memory_gauges_follow_torch" -v -p no:cacheprovider 2>&1 \
    | tee "$OUT/shm_tests.log" | tail -40
