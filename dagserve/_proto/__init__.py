"""Generated protobuf and gRPC code for the KServe v2 / Triton protocol. Do not edit.

Regenerate with ``scripts/gen_protos.sh`` from the sources in ``proto/``. The only
hand-written module here is ``_pool``: the descriptor pool the generated code registers in.
"""
