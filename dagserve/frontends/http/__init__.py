"""The HTTP/REST frontend: KServe v2 plus the Triton extensions ``tritonclient.http`` uses.

One server, one route table, one infer path:

* :mod:`.server`: the HTTP/1.1 server (httptools, one asyncio protocol per connection); the one
  place the request head and body limits and the slow-client timeouts are enforced;
* :mod:`.routes`: the route table and :func:`serve_http`; ``/infer`` goes to
  :mod:`.infer` (:class:`~.infer.InferCore`), called by the server directly, every other
  route is starlette, reached through :mod:`.bridge` (the ASGI bridge);
* :mod:`.replies`: every error's status and ``{"error": ...}`` body.
"""

from .routes import serve_http
from .server import serve_app

__all__ = ["serve_app", "serve_http"]
