"""The runtime: the server's model registry, schedulers, instance pools and statistics.

Imports no web framework, gRPC or ML framework: the frontends and backends depend on it.
"""

from .model import ModelState, ModelVersion
from .server import Server, ServerOptions

__all__ = ["ModelState", "ModelVersion", "Server", "ServerOptions"]
