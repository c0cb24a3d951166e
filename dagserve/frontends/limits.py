"""Connection limits and timeouts of the frontends: what a slow or idle client may hold.

Two small frozen value objects built at the edge (the CLI, :class:`~.runner.FrontendOptions`):
:class:`HttpLimits` for dagserve's own HTTP/1.1 server and :class:`GrpcKeepalive` for gRPC,
whose field names (and milliseconds) are Triton's ``--grpc-*`` flags. docs/operations.md
("Timeouts and slow clients") explains each one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GrpcKeepalive", "HttpLimits"]


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """Timeouts (seconds) and the connection limit of the HTTP frontend.

    * ``header_timeout``: a request's headers must arrive whole within this time of its first
      byte (and a new connection must send its first request's headers within it of
      connecting); else ``408`` and the connection closes.
    * ``body_timeout``: longest pause in receiving a request body while the server waits for
      it; else ``408`` (or a plain close once a handler reads it) and the connection closes.
    * ``write_timeout``: longest time a response may sit unsent because the client does not
      read; then the connection is dropped.
    * ``keep_alive_timeout``: how long an idle keep-alive connection stays open between
      requests.
    * ``max_connections``: open connections at most; one more is answered ``503`` and
      closed at once. 0 means no limit.
    * ``max_header_size``: largest request head (request line and headers), in bytes; a
      larger one is answered ``431`` and the connection closes.
    """

    header_timeout: float = 30.0
    body_timeout: float = 60.0
    write_timeout: float = 60.0
    keep_alive_timeout: float = 60.0
    max_connections: int = 4096
    max_header_size: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "write_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HTTP {name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.max_connections < 0:
            raise ValueError(f"HTTP max connections must be 0 (no limit) or more, got {self.max_connections}")
        if self.max_header_size < 1024:
            raise ValueError(f"HTTP max header size must be at least 1024 bytes, got {self.max_header_size}")

    @property
    def sweep_period(self) -> float:
        """How often connections are checked: a quarter of the shortest timeout, at most 1 s."""
        return min(1.0, min(self.header_timeout, self.body_timeout, self.write_timeout, self.keep_alive_timeout) / 4)


_GRPC_ARGS = {
    "keepalive_time": "grpc.keepalive_time_ms",
    "keepalive_timeout": "grpc.keepalive_timeout_ms",
    "keepalive_permit_without_calls": "grpc.keepalive_permit_without_calls",
    "http2_max_pings_without_data": "grpc.http2.max_pings_without_data",
    "http2_min_recv_ping_interval_without_data": "grpc.http2.min_ping_interval_without_data_ms",
    "http2_max_ping_strikes": "grpc.http2.max_ping_strikes",
    "max_connection_age": "grpc.max_connection_age_ms",
    "max_connection_age_grace": "grpc.max_connection_age_grace_ms",
    "max_connection_idle": "grpc.max_connection_idle_ms",
}
"""Each :class:`GrpcKeepalive` field and the gRPC channel argument it sets."""


@dataclass(frozen=True, kw_only=True)
class GrpcKeepalive:
    """gRPC keepalive and connection-age settings, Triton's flags (``--grpc-keepalive-time``
    ...), all times in milliseconds. ``None`` leaves gRPC's own default (which is Triton's
    default too); the defaults below are gRPC's, except the connection ages, which Triton also
    leaves unset (no limit)."""

    keepalive_time: int | None = None  # grpc.keepalive_time_ms; gRPC server default 7200000
    keepalive_timeout: int | None = None  # grpc.keepalive_timeout_ms; default 20000
    keepalive_permit_without_calls: bool | None = None  # default false
    http2_max_pings_without_data: int | None = None  # default 2
    http2_min_recv_ping_interval_without_data: int | None = None  # default 300000
    http2_max_ping_strikes: int | None = None  # default 2
    max_connection_age: int | None = None  # grpc.max_connection_age_ms; default unlimited
    max_connection_age_grace: int | None = None  # grpc.max_connection_age_grace_ms
    max_connection_idle: int | None = None  # grpc.max_connection_idle_ms; default unlimited


    def __post_init__(self) -> None:
        for name in _GRPC_ARGS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool) and value < 0:
                raise ValueError(f"gRPC {name.replace('_', ' ')} must not be negative, got {value}")

    def channel_options(self) -> list[tuple[str, int]]:
        """The gRPC server channel arguments for the settings that are set."""
        return [
            (arg, int(getattr(self, name))) for name, arg in _GRPC_ARGS.items() if getattr(self, name) is not None
        ]
