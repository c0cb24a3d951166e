"""TLS on both frontends, with a CA, a server and a client certificate made by the openssl CLI
inside the test: tritonclient round trips over HTTPS (``ssl=True``) and gRPC (``ssl=True`` and
the root certificate); mutual TLS refuses a client without a certificate."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.errors import ConfigError
from dagserve.frontends.tls import TLSConfig
from dagserve.testing import serve_in_thread

REPO = Path(__file__).parent.parent / "repos" / "triton_python"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ca.pem, server.pem/server.key (for 127.0.0.1 and localhost), client.pem/client.key,
    and rogue.pem/rogue.key (a client certificate from another CA)."""
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "rogue_ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=dagserve test {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ca, ext in (("server", "ca", "server.ext"), ("client", "ca", "client.ext"),
                          ("rogue", "rogue_ca", "client.ext")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext, cwd=d)
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def inputs(module: Any) -> list[Any]:
    out = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, [4], "FP32")
        tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
        out.append(tensor)
    return out


def tls(certs: dict[str, Path], mutual: bool = False) -> TLSConfig:
    return TLSConfig(cert=certs["server_pem"], key=certs["server_key"], root_cert=certs["ca_pem"], mutual=mutual)


def http_client(url: str, certs: dict[str, Path], client: str | None = None) -> httpclient.InferenceServerClient:
    def factory() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(certs["ca_pem"]))
        if client is not None:
            context.load_cert_chain(certs[f"{client}_pem"], certs[f"{client}_key"])
        return context

    return httpclient.InferenceServerClient(url, ssl=True, ssl_context_factory=factory)


def grpc_client(url: str, certs: dict[str, Path], client: str | None = None) -> grpcclient.InferenceServerClient:
    kwargs: dict[str, str] = {"root_certificates": str(certs["ca_pem"])}
    if client is not None:
        kwargs |= {"private_key": str(certs[f"{client}_key"]), "certificate_chain": str(certs[f"{client}_pem"])}
    return grpcclient.InferenceServerClient(url, ssl=True, **kwargs)


@pytest.fixture(scope="module")
def server_tls(certs: dict[str, Path]) -> Iterator[Any]:
    with serve_in_thread(REPO, http_tls=tls(certs), grpc_tls=tls(certs)) as running:
        yield running


def test_https_round_trip(server_tls: Any, certs: dict[str, Path]) -> None:
    """tritonclient HTTP with ssl=True verifies the server against the CA and infers."""
    c = http_client(server_tls.http_url, certs)
    assert c.is_server_ready()
    result = c.infer("add_sub", inputs(httpclient))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.arange(4, dtype=np.float32) * 2)


def test_grpc_tls_round_trip(server_tls: Any, certs: dict[str, Path]) -> None:
    """tritonclient gRPC with ssl=True and the root certificate infers over TLS."""
    c = grpc_client(server_tls.grpc_url, certs)
    assert c.is_server_ready()
    result = c.infer("add_sub", inputs(grpcclient))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros(4, dtype=np.float32))


def test_plain_clients_do_not_get_through(server_tls: Any, certs: dict[str, Path]) -> None:
    """A plain-text client gets no answer from a TLS port; metrics stay plain HTTP."""
    with pytest.raises(Exception):  # noqa: B017 - the exact failure is the client library's
        httpclient.InferenceServerClient(server_tls.http_url, network_timeout=10).is_server_live()
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(server_tls.grpc_url).is_server_live(client_timeout=10)
    with urllib.request.urlopen(f"http://{server_tls.metrics_url}/metrics", timeout=30) as reply:
        assert reply.status == 200


def test_mutual_tls(certs: dict[str, Path]) -> None:
    """With mutual TLS a client with a certificate from the CA is served; one without a
    certificate, or with one from another CA, is refused at the handshake."""
    with serve_in_thread(REPO, metrics=False, http_tls=tls(certs, mutual=True), grpc_tls=tls(certs, mutual=True)) as running:
        assert http_client(running.http_url, certs, "client").infer("add_sub", inputs(httpclient)) is not None
        assert grpc_client(running.grpc_url, certs, "client").infer("add_sub", inputs(grpcclient)) is not None
        for who in (None, "rogue"):
            with pytest.raises(Exception):  # noqa: B017 - a TLS alert, as the client library reports it
                http_client(running.http_url, certs, who).is_server_live()
            with pytest.raises(InferenceServerException):
                grpc_client(running.grpc_url, certs, who).is_server_live(client_timeout=20)
        # The refusals did not harm the server.
        assert http_client(running.http_url, certs, "client").is_server_live()


def test_bad_tls_files_are_config_errors(certs: dict[str, Path], tmp_path: Path) -> None:
    """A missing file or a key that does not match the certificate is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="nope.pem"):
        TLSConfig(cert=tmp_path / "nope.pem", key=certs["server_key"]).ssl_context()
    with pytest.raises(ConfigError, match="server.pem"):
        TLSConfig(cert=certs["server_pem"], key=certs["client_key"]).ssl_context()
    with pytest.raises(ConfigError, match="root certificate"):
        TLSConfig(cert=certs["server_pem"], key=certs["server_key"], mutual=True)


def test_cli_tls_flags(certs: dict[str, Path]) -> None:
    """`dagserve serve --grpc-use-ssl ...` serves gRPC over TLS; --http-use-ssl without a key
    is a usage error (exit 2)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO), "--http-use-ssl",
         "--http-server-cert", str(certs["server_pem"])],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "--http-server-key" in proc.stderr
    from dagserve.cli import build_parser
    from dagserve.cli_security import serve_options

    args = build_parser().parse_args([
        "serve", "--model-repository", ".", "--grpc-use-ssl-mutual=true", "--grpc-server-cert", str(certs["server_pem"]),
        "--grpc-server-key", str(certs["server_key"]), "--grpc-root-cert", str(certs["ca_pem"]),
        "--metrics-address", "127.0.0.2",
    ])
    options = serve_options(args)
    assert options["grpc_tls"] == tls(certs, mutual=True)
    assert options["http_tls"] is None
    assert options["metrics_address"] == "127.0.0.2"


def test_metrics_address_binds_metrics_elsewhere() -> None:
    """--metrics-address puts the plain metrics endpoint on its own address, apart from --host."""
    with serve_in_thread(REPO, grpc=False, metrics_address="127.0.0.2") as running:
        assert running.metrics_url.startswith("127.0.0.2:")
        assert running.http_url.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://{running.metrics_url}/metrics", timeout=30) as reply:
            assert b"nv_inference_count" in reply.read()


def test_cli_serves_https(certs: dict[str, Path]) -> None:
    """`dagserve serve --http-use-ssl-mutual ...` reports an https:// address and serves a
    client holding a certificate from the root; SIGTERM stops it cleanly."""
    import re
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO),
         "--http-port", "0", "--grpc-port", "-1", "--metrics-port", "-1", "--http-use-ssl-mutual",
         "--http-server-cert", str(certs["server_pem"]), "--http-server-key", str(certs["server_key"]),
         "--http-root-cert", str(certs["ca_pem"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        address = None
        for line in proc.stdout:
            match = re.search(r"HTTP service listening on https://(\S+)", line)
            if match:
                address = match.group(1)
                break
        assert address is not None, f"no https address reported (exit {proc.poll()})"
        assert http_client(address, certs, "client").infer("add_sub", inputs(httpclient)) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
