#!/usr/bin/env bash
# The GPU checks of the framework backends, in one run on a CUDA machine (docs/gpu.md has the
# commands and the results): the gpu-marked tests (torch on CUDA, torch -> CuPy by DLPack, an
# ensemble kept on the GPU, pinned host copies) and the torch serving benchmark.
#
# GPU_CHECK_BENCH=0 skips the benchmark. Wheels the machine lacks travel in .whl/ (docs/gpu.md lists them) and are installed into
# /tmp/site. Logs go to $OUT (or ./gpu_out) as well as stdout.
set -uo pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 - <<'EOF'
import importlib.util as u
import cupy, numpy, onnxruntime, torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.is_available(), "| cupy", cupy.__version__, "| onnxruntime", onnxruntime.__version__,
      onnxruntime.get_available_providers(), "| numpy", numpy.__version__)
print("present:", {m: u.find_spec(m) is not None for m in ("torchvision", "tensorrt", "cuml", "xgboost", "tritonclient")})
EOF

echo "== gpu tests"
python3 -m pytest -m gpu tests/backends -v -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"

echo "== backend tests that need no client library, on this machine's CPU (GPU hidden: KIND_AUTO would use it)"
CUDA_VISIBLE_DEVICES="" python3 -m pytest tests/backends/test_torch.py tests/backends/test_fil.py tests/backends/test_warmup.py \
    tests/backends/test_tensors.py tests/backends/test_tensorrt.py tests/backends/test_onnx.py \
    tests/backends/test_pipeline.py -q -p no:cacheprovider \
    -k "not http" 2>&1 | tail -5 | tee "$OUT/cpu_tests.log"

if [ "${GPU_CHECK_BENCH:-1}" = "0" ]; then exit 0; fi
echo "== bench: ResNet-50 (torchvision, random weights), fp32 then fp16"
python3 bench/bench_torch.py --device cuda --model resnet50 --max-batch 64 --concurrency 256 \
    --seconds 8 --threads 0 --served 1:device,2:device,2:host 2>&1 | tee "$OUT/bench_resnet50_fp32.log"
python3 bench/bench_torch.py --device cuda --model resnet50 --max-batch 64 --concurrency 256 \
    --seconds 8 --threads 0 --precision fp16 --served 1:device,2:host 2>&1 | tee "$OUT/bench_resnet50_fp16.log"
