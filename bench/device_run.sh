#!/usr/bin/env bash
# One run on the GPU machine (16 cores, one GPU), through the device tool, from the project root:
#   run(command="bash bench/device_run.sh", carry=[".device-carry"], timeout_s=600)
# .device-carry comes from ../shared/triton-reference/device/prepare_carry.sh (its README), with
# EXTRA_WHEELS=nvidia-ml-py for the GPU metrics. DEVICE_BENCH=0 skips the ResNet-50 benchmark. Prints, and leaves in $OUT:
#   compare.txt  dagserve (default, then --python-execution inline) vs Triton 2.51 on the Triton
#                ensemble of three Python steps, perf_analyzer at c1/16/64 over HTTP and gRPC;
#   gpu.txt      the GPU metrics dagserve exports (NVML), the gpu-marked tests, ResNet-50 fp16
#                served vs called directly (bench/bench_torch.py).
set -uo pipefail
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CARRY="${CARRY:-.device-carry}"
# ../shared is not on the GPU machine: the reference scripts travel in the carry (copy
# ../shared/triton-reference to .device-carry/triton-reference first).
COMPARE="$CARRY/triton-reference/device/compare.sh"
[ -f "$COMPARE" ] || COMPARE=../shared/triton-reference/device/compare.sh
MATRIX='classify http 1,16,64 RAW:32; classify grpc 1,16,64 RAW:32'

{
  OUT=/tmp/cmp_default bash "$COMPARE" bench/repos/triton_ensemble --matrix "$MATRIX" > /tmp/cmp_default.log 2>&1
  OUT=/tmp/cmp_inline DAGSERVE_ARGS="--python-execution inline" bash "$COMPARE" bench/repos/triton_ensemble \
      --parts dagserve --matrix "$MATRIX" > /tmp/cmp_inline.log 2>&1
  echo "== dagserve (default: thread) vs Triton"; cat /tmp/cmp_default/table.txt; cat /tmp/cmp_default/cpu.txt
  echo "== dagserve --python-execution inline (same Triton figures as above)"
  bash "$COMPARE" --table /tmp/cmp_default/results.tsv /tmp/cmp_inline/results.tsv
  cat /tmp/cmp_inline/cpu.txt
  tail -n 5 /tmp/cmp_default.log /tmp/cmp_inline.log
} 2>&1 | tee "$OUT/compare.txt"

{
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$CARRY"/wheels/*.whl 2>&1 | tail -2
  export PYTHONPATH="/tmp/site:$PWD"
  echo "== GPU metrics (NVML)"
  python3 -m dagserve.cli serve --model-repository examples/pipelines --http-port 18300 --grpc-port 18301 \
      --metrics-port 18302 --allow-gpu-metrics true > /tmp/metrics_server.log 2>&1 &
  pid=$!
  for _ in $(seq 120); do curl -sf localhost:18300/v2/health/ready > /dev/null && break; sleep 0.5; done
  sleep 3  # one metrics interval (2 s) for the gauges to be read
  curl -s localhost:18302/metrics | grep -E "^nv_gpu|^nv_energy|^nv_cpu" || { echo "no GPU families:"; tail -20 /tmp/metrics_server.log; }
  kill $pid; wait $pid
  echo "== gpu tests"
  # (the other test files import tritonclient, which the GPU machine lacks)
  python3 -m pytest -m gpu tests/backends/test_gpu.py tests/backends/test_backend_options.py -q -p no:cacheprovider 2>&1 | tail -5
  [ "${DEVICE_BENCH:-1}" = "0" ] && exit 0
  echo "== bench: ResNet-50 fp16, one instance, served vs direct"
  timeout 240 python3 bench/bench_torch.py --device cuda --model resnet50 --max-batch 64 --concurrency 256 \
      --seconds 8 --threads 0 --precision fp16 --served 1:device 2>&1 | tail -15
} 2>&1 | tee "$OUT/gpu.txt"
