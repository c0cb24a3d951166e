"""The response channel of one request to a decoupled model.

A :class:`ChannelSender` is the :class:`~dagserve.types.ResponseSender` a decoupled model
writes to — from the event loop or from any thread — and the engine reads from, in order.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ["ChannelSender", "Message"]

Message = tuple[Mapping[str, Any] | BaseException | None, bool]


class ChannelSender:
    """Thread-safe sender into a memory object stream owned by the event loop.

    Create it on the event loop thread; read ``receive`` there.
    """

    def __init__(self) -> None:
        send, receive = anyio.create_memory_object_stream[Message](math.inf)
        self._send = send
        self.receive: MemoryObjectReceiveStream[Message] = receive
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._closed = False
        self._cancelled = False

    def send(self, outputs: Mapping[str, Any] | BaseException | None, *, final: bool) -> None:
        if self._closed:
            return
        if final:
            self._closed = True
        if threading.get_ident() == self._loop_thread:
            self._put((outputs, final))
        else:
            try:
                anyio.from_thread.run_sync(self._put, (outputs, final), token=self._token)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                pass

    def _put(self, message: Message) -> None:
        try:
            self._send.send_nowait(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away; late responses are dropped
        if message[1]:
            self._send.close()

    def is_cancelled(self) -> bool:
        """True once the reader stopped before the final response (client gone, or failure)."""
        return self._cancelled

    def cancel(self) -> None:
        """The reader is gone: drop every later response. Call on the event loop thread."""
        self._cancelled = self._cancelled or not self._closed
        self._closed = True
        self._send.close()
