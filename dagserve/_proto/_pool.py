"""The descriptor pool dagserve's generated protobuf code registers its files in.

Hand-written (the rest of this package is generated). Our .proto files keep Triton's file
names and symbols (``grpc_service.proto``, ``inference.ModelInferRequest``) because stock
clients depend on them, and tritonclient registers those same names in protobuf's
process-wide default pool. Protobuf refuses a second, different definition of a name in one
pool, so dagserve keeps its own: both libraries can then be imported in one process.

Wire format depends only on field numbers and types, never on the pool, so messages built
from either pool interoperate byte for byte.
"""

from google.protobuf import descriptor_pool

POOL: descriptor_pool.DescriptorPool = descriptor_pool.DescriptorPool()
"""Holds model_config.proto, grpc_service.proto and health.proto as dagserve built them."""
