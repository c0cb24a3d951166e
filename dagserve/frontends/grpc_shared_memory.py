"""The gRPC RPCs of Triton's shared-memory extensions (``SystemSharedMemory*`` and
``CudaSharedMemory*``), as a mixin of the inference servicer over one
:class:`~dagserve.shared_memory.SharedMemoryRegistry` (``self._shared_memory``).

Every error ends the call with the status of the one error table (:mod:`.status`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .._proto import grpc_service_pb2 as pb
from ..shared_memory import RegionKind, SharedMemoryRegistry
from .status import status_for

__all__ = ["SharedMemoryRPCs"]

_R = TypeVar("_R")


def _boundary(method: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
    """grpc.py's ``_rpc`` for these RPCs (grpc.py imports this module, so it cannot be
    imported from there): any exception ends the call with its status from the table."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _R:
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the boundary: every error becomes a status
            status = status_for(exc)
            await context.abort(status.grpc, status.message)
            raise AssertionError("unreachable: context.abort raises") from None  # pragma: no cover

    return handler


class SharedMemoryRPCs:
    """The six RPCs; the class using it sets ``_shared_memory``."""

    _shared_memory: SharedMemoryRegistry

    @_boundary
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for entry in self._shared_memory.status(RegionKind.SYSTEM, request.name):
            response.regions[entry["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**entry))
        return response

    @_boundary
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._shared_memory.register_system(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_boundary
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._shared_memory.unregister(RegionKind.SYSTEM, request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_boundary
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        response = pb.CudaSharedMemoryStatusResponse()
        for entry in self._shared_memory.status(RegionKind.CUDA, request.name):
            response.regions[entry["name"]].CopyFrom(pb.CudaSharedMemoryStatusResponse.RegionStatus(**entry))
        return response

    @_boundary
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self._shared_memory.register_cuda(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_boundary
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self._shared_memory.unregister(RegionKind.CUDA, request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
