"""dagserve's own HTTP/2 server for the gRPC frontend (``--grpc-server native``).

:mod:`.hpack` decodes header blocks, :mod:`.connection` is one HTTP/2 connection (frames,
flow control, GOAWAY), :mod:`.calls` runs gRPC calls of the grpc.aio servicers, and
:mod:`.server` is :func:`serve_grpc_native`, a drop-in for :func:`~..grpc.serve_grpc`.
"""

from .server import serve_grpc_native

__all__ = ["serve_grpc_native"]
