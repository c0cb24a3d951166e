#!/usr/bin/env bash
# What "Use every core" still had to measure on the GPU machine, in one device run (under the
# device tool's 10 minutes), from the project root:
#   run(command="bash bench/device_every_core.sh", carry=[".device-carry"], timeout_s=600)
# (.device-carry from ../shared/triton-reference/device/prepare_carry.sh with the reference
# scripts copied into it, and whl/ for tritonclient: docs/gpu.md.)
#   1. bench/device_workers.sh: Triton 2.51 and dagserve on the Triton ensemble of three Python
#      steps, perf_analyzer at c16/c64 over HTTP and gRPC, dagserve with each of VARIANTS
#      (default: 16 workers with and without --worker-spread);
#   2. the gpu-marked tests (tests/backends/test_gpu.py and the workers' GPU tests);
#   3. bench/bench_torch.py: ResNet-50 fp16, one instance, one batch in flight (as before
#      batches_in_flight) and the default, against calling the module directly.
# STEPS (default "workers tests torch") picks which run. Everything is also left in $OUT.
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
STEPS=${STEPS:-"workers tests torch"}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/wheels/*.whl "$CARRY"/whl/*.whl 2>&1 | tail -2
echo "== machine: $(nproc) cores; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"

if [[ " $STEPS " == *" workers "* ]]; then
  MATRIX=${MATRIX:-'classify http 16,64 RAW:32; classify grpc 16,64 RAW:32'} \
  VARIANTS=${VARIANTS:-'--workers 16 --worker-spread true; --workers 16'} PLACEMENT=0 \
  OUT="$OUT" timeout 330 bash bench/device_workers.sh
fi

if [[ " $STEPS " == *" tests "* ]]; then
  echo "== gpu tests"
  PYTHONPATH="/tmp/site:$PWD" timeout 150 python3 -m pytest -m gpu tests/backends/test_gpu.py tests/backends/test_gpu_workers.py tests/test_workers.py \
      -q -p no:cacheprovider 2>&1 | tail -8 | tee "$OUT/gpu_tests.txt"
fi

if [[ " $STEPS " == *" torch "* ]]; then
  echo "== bench: ResNet-50 fp16, one instance: one batch in flight, then the default (2)"
  PYTHONPATH="/tmp/site:$PWD" timeout 200 python3 bench/bench_torch.py --device cuda --model resnet50 \
      --max-batch 64 --concurrency 256 --seconds 8 --threads 0 --precision fp16 --served 1:device:1,1:device \
      2>&1 | tail -6 | tee "$OUT/torch.txt"
fi
