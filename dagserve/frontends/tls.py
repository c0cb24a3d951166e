"""TLS for the HTTP and gRPC frontends.

gRPC takes Triton's flags (``--grpc-use-ssl``, ``--grpc-server-cert``, ``--grpc-server-key``,
``--grpc-root-cert``, ``--grpc-use-ssl-mutual``). Triton has no HTTPS of its own; dagserve
offers it under the same names with ``http`` in place of ``grpc`` (``--http-use-ssl``,
``--http-server-cert``, ``--http-server-key``, ``--http-root-cert``, ``--http-use-ssl-mutual``).
With ``mutual`` the server asks every client for a certificate signed by the root
certificate and refuses the TLS handshake without one. The metrics endpoint stays plain; bind
it to a private address with ``--metrics-address``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    import grpc

__all__ = ["TLSConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TLSConfig:
    """A server certificate and key (PEM files), and optionally the root certificate that
    client certificates must chain to; ``mutual`` requires clients to present one."""

    cert: Path
    key: Path
    root_cert: Path | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        if self.mutual and self.root_cert is None:
            raise ConfigError("mutual TLS needs a root certificate to verify clients with (--*-root-cert)")

    def _read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side ``SSLContext`` (TLS 1.2 or later) for the HTTP frontend.

        Raises:
            ConfigError: a file is missing or unreadable, or the key does not match the
                certificate; the message names the file.
        """
        for path, what in ((self.cert, "certificate"), (self.key, "key"), (self.root_cert, "root certificate")):
            if path is not None:
                self._read(path, what)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
            if self.root_cert is not None:
                context.load_verify_locations(cafile=str(self.root_cert))
        except ssl.SSLError as exc:
            raise ConfigError(f"TLS certificate {self.cert} / key {self.key}: {exc.reason or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials for ``grpc.aio.Server.add_secure_port``.

        Raises:
            ConfigError: a file is missing or unreadable.
        """
        import grpc

        cert = self._read(self.cert, "certificate")
        key = self._read(self.key, "key")
        root = self._read(self.root_cert, "root certificate") if self.root_cert is not None else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=root, require_client_auth=self.mutual)
