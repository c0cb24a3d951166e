#!/usr/bin/env bash
# Regenerate dagserve/_proto/ from proto/*.proto.
#
# Usage: scripts/gen_protos.sh            (uses $PYTHON, default `python`, with grpcio-tools==1.66.2)
#
# The generated code is committed, so users never need grpcio-tools. Two rewrites follow
# protoc, both needed because the .proto files keep the published Triton file and package
# names (stock clients depend on them):
#   1. Imports between generated modules become package-relative (`from . import ...`), so
#      `from dagserve._proto import grpc_service_pb2` works without touching sys.path.
#   2. Descriptors go into dagserve's own descriptor pool (dagserve/_proto/_pool.py), not
#      protobuf's process-wide default pool. tritonclient registers the same file names and
#      symbols (grpc_service.proto, inference.ModelInferRequest, ...) in the default pool,
#      and protobuf refuses a second, different definition, so without this a process could
#      not import both dagserve and tritonclient.
# Note: protoc stamps the generated code with the protobuf and grpcio versions it came
# from and the code refuses older runtimes; keep pyproject's lower bounds at least as high
# as the versions printed at the end. grpcio-tools 1.66.2 stamps protobuf 5.27: new enough for
# protobuf 5 and 6 runtimes, old enough for tritonclient, which still needs protobuf < 7.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT=dagserve/_proto
PROTOS=(model_config health grpc_service)

"$PYTHON" -c "import grpc_tools.protoc" 2>/dev/null || {
    echo "gen_protos: $PYTHON has no grpc_tools; install it first: $PYTHON -m pip install grpcio-tools==1.66.2" >&2
    echo "gen_protos: nothing was changed" >&2
    exit 2
}
rm -f "$OUT"/*_pb2.py "$OUT"/*_pb2.pyi "$OUT"/*_pb2_grpc.py
"$PYTHON" -m grpc_tools.protoc -Iproto \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    "${PROTOS[@]/%/.proto}" 2>&1 | sed 's/^/protoc: /'
# model_config.proto declares no service: its _grpc module would be empty.
rm -f "$OUT/model_config_pb2_grpc.py"

for name in "${PROTOS[@]}"; do
    # (1) relative imports between our generated modules, in code and stubs.
    for p in "${PROTOS[@]}"; do
        sed -i -E "s/^import ${p}_pb2 as /from . import ${p}_pb2 as /" \
            "$OUT/${name}_pb2.py" "$OUT/${name}_pb2.pyi" \
            $( [ -f "$OUT/${name}_pb2_grpc.py" ] && echo "$OUT/${name}_pb2_grpc.py" )
    done
    # (2) our own descriptor pool instead of the process-wide default one.
    sed -i -E \
        -e "s/^(from google\.protobuf import descriptor_pool as _descriptor_pool)$/\1\nfrom . import _pool/" \
        -e "s/_descriptor_pool\.Default\(\)\.AddSerializedFile\(/_pool.POOL.AddSerializedFile(/" \
        "$OUT/${name}_pb2.py"
    grep -q "_pool.POOL.AddSerializedFile" "$OUT/${name}_pb2.py" \
        || { echo "gen_protos: pool rewrite failed for ${name}_pb2.py" >&2; exit 1; }
done

echo "generated: $(cd "$OUT" && ls -- *_pb2*.py* | tr '\n' ' ')"
echo "gencode needs: protobuf>=$(sed -n 's/^# Protobuf Python Version: //p' "$OUT/grpc_service_pb2.py")," \
     "grpcio>=$(sed -n "s/^GRPC_GENERATED_VERSION = '\(.*\)'/\1/p" "$OUT/grpc_service_pb2_grpc.py")"
