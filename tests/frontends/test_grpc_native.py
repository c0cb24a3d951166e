"""The native gRPC server (``--grpc-server native``): its HPACK decoder, and the HTTP/2 cases
a real client cannot provoke, over raw sockets (flow control with a tiny window, CONTINUATION,
malformed frames, RST_STREAM, deadlines, size limits), plus tritonclient (sync and asyncio)
for what a client does (compression, large messages, streams).

The rest of the gRPC tests run against it with ``DAGSERVE_GRPC_SERVER=native``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import queue
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from dagserve._proto import grpc_service_pb2 as pb
from dagserve.engine import Server, ServerOptions
from dagserve.frontends.grpc_native import connection as h2
from dagserve.frontends.grpc_native import serve_grpc_native
from dagserve.frontends.grpc_native.hpack import (
    Decoder,
    HPACKError,
    encode_literal,
    huffman_decode,
    huffman_encode,
)
from dagserve.testing import FileGate, RunningServer, serve_in_thread, wait_until

REPOS = Path(__file__).resolve().parents[1] / "repos"
DEADLINE = 60.0
INFER = b"/inference.GRPCInferenceService/ModelInfer"


# --------------------------------------------------------------------------------------------
# HPACK


def test_hpack_decodes_the_rfc_examples_with_the_dynamic_table() -> None:
    """RFC 7541 C.3 (plain literals) and C.4 (Huffman): three requests on one decoder, the
    later ones referring to the dynamic table the earlier ones filled."""
    for blocks in (
        ("828684410f7777772e6578616d706c652e636f6d", "828684be58086e6f2d6361636865",
         "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"),
        ("828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf",
         "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
    ):
        decoder = Decoder()
        first, second, third = (decoder.decode(bytes.fromhex(block)) for block in blocks)
        assert first == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                         (b":authority", b"www.example.com")]
        assert second[-1] == (b"cache-control", b"no-cache")
        assert third == [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
                         (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")]


def test_hpack_huffman_round_trip_and_bad_padding() -> None:
    """Huffman strings decode to what was encoded (every byte value); bad padding and EOS are
    errors."""
    data = bytes(range(256)) * 2
    assert huffman_decode(huffman_encode(data)) == data
    assert huffman_encode(b"www.example.com") == bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")
    with pytest.raises(HPACKError):
        huffman_decode(b"\xf1\xe3\x00")  # padding of zeros
    with pytest.raises(HPACKError):
        huffman_decode(b"\xff\xff\xff\xff")  # EOS


def test_hpack_huffman_agrees_with_the_hpack_package() -> None:
    """The canonical code built from the RFC's code lengths is the hpack package's table."""
    huffman = pytest.importorskip("hpack.huffman")
    constants = pytest.importorskip("hpack.huffman_constants")
    encoder = huffman.HuffmanEncoder(constants.REQUEST_CODES, constants.REQUEST_CODES_LENGTH)
    for size in range(0, 300, 7):
        data = os.urandom(size)
        assert huffman_encode(data) == encoder.encode(data)


def test_hpack_cached_block_follows_the_dynamic_table() -> None:
    """A repeated block is answered from the cache only while the table is unchanged: the same
    bytes ("dynamic entry 62") decode to whatever entry 62 is now."""
    decoder = Decoder()
    insert = b"\x40" + encode_literal(b"k", b"first")[1:]  # literal with incremental indexing, new name
    assert decoder.decode(insert) == [(b"k", b"first")]
    assert decoder.decode(b"\xbe") == [(b"k", b"first")]
    assert decoder.decode(b"\xbe") == [(b"k", b"first")]
    decoder.decode(b"\x40" + encode_literal(b"k", b"second")[1:])
    assert decoder.decode(b"\xbe") == [(b"k", b"second")]
    with pytest.raises(HPACKError):
        decoder.decode(b"\xff\x00")  # index 127: past the table


# --------------------------------------------------------------------------------------------
# A raw HTTP/2 client


class RawClient:
    """An HTTP/2 connection driven frame by frame."""

    def __init__(self, address: str, *, window: int = 65535, connection_window: int = 0) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
        self.buffer = b""
        self.decoder = Decoder()
        settings = struct.pack(">HI", h2.INITIAL_WINDOW_SIZE, window)
        self.sock.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, settings))
        if connection_window:
            self.send(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", connection_window))

    def close(self) -> None:
        self.sock.close()

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.sock.sendall(h2.frame(kind, flags, stream_id, payload))

    def frame(self) -> tuple[int, int, int, bytes] | None:
        """The next frame, ``None`` once the server closed the connection."""
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    kind, flags = self.buffer[3], self.buffer[4]
                    stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                    payload = self.buffer[9:9 + length]
                    self.buffer = self.buffer[9 + length:]
                    return kind, flags, stream_id, payload
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk

    def request(self, stream_id: int, path: bytes, message: bytes, *, extra: tuple[tuple[bytes, bytes], ...] = (),
                end: bool = True) -> None:
        self.send(h2.HEADERS, h2.END_HEADERS, stream_id, request_block(path, extra))
        self.send(h2.DATA, h2.END_STREAM if end else 0, stream_id, grpc_message(message))

    def response(self, stream_id: int) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes]]:
        """Read until ``stream_id`` ends: (headers, DATA bytes, trailers); a trailers-only
        response has empty headers."""
        headers: dict[bytes, bytes] = {}
        data = b""
        while True:
            got = self.frame()
            assert got is not None, "the server closed the connection"
            kind, flags, sid, payload = got
            if kind == h2.HEADERS and sid == stream_id:
                fields = dict(self.decoder.decode(payload))
                if flags & h2.END_STREAM:
                    return headers, data, fields
                headers = fields
            elif kind == h2.DATA and sid == stream_id:
                data += payload
            elif kind == h2.RST_STREAM and sid == stream_id:
                raise AssertionError(f"stream reset: {payload.hex()}")

    def goaway(self) -> tuple[int, int]:
        """Read until GOAWAY: (last stream id, error code)."""
        while True:
            got = self.frame()
            assert got is not None, "closed without GOAWAY"
            if got[0] == h2.GOAWAY:
                return struct.unpack(">II", got[3][:8])


def request_block(path: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    fields = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"test"),
              (b"content-type", b"application/grpc"), (b"te", b"trailers"), *extra)
    return b"".join(encode_literal(name, value) for name, value in fields)


def grpc_message(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


def messages(data: bytes) -> list[bytes]:
    out = []
    while data:
        size = int.from_bytes(data[1:5], "big")
        out.append(data[5:5 + size])
        data = data[5 + size:]
    return out


def slow_request(ms: int) -> bytes:
    request = pb.ModelInferRequest(model_name="slow")
    tensor = request.inputs.add(name="SLEEP_MS", datatype="INT32", shape=[1, 1])
    tensor.contents.int_contents.append(ms)
    return request.SerializeToString()


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def running() -> Iterator[RunningServer]:
    with serve_in_thread(REPOS / "triton_python", http=False, metrics=False, grpc_server="native",
                         grpc_max_message_size=64 * 1024 * 1024) as running:
        yield running


@pytest.fixture
def slow(slow_gate: FileGate) -> Iterator[RunningServer]:
    with serve_in_thread(REPOS / "slow", http=False, metrics=False, grpc_server="native",
                         grpc_max_message_size=4096) as running:
        yield running


# --------------------------------------------------------------------------------------------
# HTTP/2 over raw sockets


def test_unary_call_over_raw_http2(running: RunningServer) -> None:
    """A unary call: response HEADERS (200, application/grpc), one message, grpc-status 0."""
    client = RawClient(running.grpc_url)
    try:
        client.request(1, b"/inference.GRPCInferenceService/ServerLive", b"")
        headers, data, trailers = client.response(1)
        assert headers[b":status"] == b"200" and headers[b"content-type"] == b"application/grpc"
        assert pb.ServerLiveResponse.FromString(messages(data)[0]).live
        assert trailers[b"grpc-status"] == b"0"
    finally:
        client.close()


def test_tiny_client_window_is_respected(running: RunningServer) -> None:
    """With a 10-byte stream window the server sends 10 bytes of DATA and holds the rest
    until the client's WINDOW_UPDATE; then the whole response and its trailers arrive."""
    client = RawClient(running.grpc_url, window=10)
    try:
        request = pb.ModelMetadataRequest(name="add_sub").SerializeToString()
        client.request(1, b"/inference.GRPCInferenceService/ModelMetadata", request)
        received = b""
        while len(received) < 10:
            kind, flags, sid, payload = client.frame() or (None, 0, 0, b"")
            assert kind is not None
            if kind == h2.DATA and sid == 1:
                received += payload
            assert not (kind == h2.HEADERS and flags & h2.END_STREAM), "trailers before the window allowed"
        assert len(received) == 10
        # The response is queued: a PING's ack comes back with no more DATA before it.
        client.send(h2.PING, 0, 0, b"12345678")
        while True:
            kind, flags, sid, payload = client.frame() or (None, 0, 0, b"")
            assert kind is not None and kind != h2.DATA, "DATA past the client's window"
            if kind == h2.PING and flags & h2.ACK:
                break
        client.send(h2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1 << 20))
        _, rest, trailers = client.response(1)
        assert trailers[b"grpc-status"] == b"0"
        assert pb.ModelMetadataResponse.FromString(messages(received + rest)[0]).name == "add_sub"
    finally:
        client.close()


def test_large_request_in_many_frames_and_a_small_connection_window(running: RunningServer) -> None:
    """A 200 kB request sent in 1000-byte DATA frames is reassembled; a 300 kB response goes out
    within the client's 65535-byte connection window, resumed by each WINDOW_UPDATE."""
    client = RawClient(running.grpc_url, window=1 << 20)
    try:
        request = pb.ModelInferRequest(model_name="string_case")
        tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
        text = b"abc" * 100_000
        tensor.contents.bytes_contents.append(text)
        body = grpc_message(request.SerializeToString())
        client.send(h2.HEADERS, h2.END_HEADERS, 1, request_block(INFER))
        for start in range(0, len(body), 1000):
            end = h2.END_STREAM if start + 1000 >= len(body) else 0
            client.send(h2.DATA, end, 1, body[start:start + 1000])
        data = b""
        while True:
            kind, flags, _, payload = client.frame() or (None, 0, 0, b"")
            assert kind is not None
            if kind == h2.DATA:
                data += payload
                client.send(h2.WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))  # the connection's
            elif kind == h2.HEADERS and flags & h2.END_STREAM:
                assert dict(client.decoder.decode(payload))[b"grpc-status"] == b"0"
                break
            elif kind == h2.HEADERS:
                client.decoder.decode(payload)
        response = pb.ModelInferResponse.FromString(messages(data)[0])
        assert text.upper() in response.raw_output_contents[0]
    finally:
        client.close()


def test_continuation_padding_and_priority(running: RunningServer) -> None:
    """A header block split over HEADERS and two CONTINUATIONs, and a PADDED + PRIORITY
    HEADERS with a PADDED DATA frame, are both served."""
    client = RawClient(running.grpc_url)
    try:
        block = request_block(b"/inference.GRPCInferenceService/ServerReady", ((b"x-filler", b"y" * 100),))
        client.send(h2.HEADERS, 0, 1, block[:20])
        client.send(h2.CONTINUATION, 0, 1, block[20:60])
        client.send(h2.CONTINUATION, h2.END_HEADERS, 1, block[60:])
        client.send(h2.DATA, h2.END_STREAM, 1, grpc_message(b""))
        assert client.response(1)[2][b"grpc-status"] == b"0"
        padded = bytes((7,)) + b"\x00\x00\x00\x00\x10" + request_block(b"/inference.GRPCInferenceService/ServerLive")
        client.send(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY_FLAG, 3, padded + b"\0" * 7)
        client.send(h2.DATA, h2.END_STREAM | h2.PADDED, 3, b"\x03" + grpc_message(b"") + b"\0\0\0")
        assert client.response(3)[2][b"grpc-status"] == b"0"
    finally:
        client.close()


@pytest.mark.parametrize(("frames", "code"), [
    ([(h2.PING, 0, 0, b"1234567")], h2.FRAME_SIZE_ERROR),
    ([(h2.DATA, 0, 0, b"x")], h2.PROTOCOL_ERROR),
    ([(h2.HEADERS, h2.END_HEADERS, 2, request_block(INFER))], h2.PROTOCOL_ERROR),
    ([(h2.HEADERS, 0, 1, request_block(INFER)[:10]), (h2.PING, 0, 0, b"12345678")], h2.PROTOCOL_ERROR),
    ([(h2.HEADERS, h2.END_HEADERS, 1, b"\xff\x7f")], h2.COMPRESSION_ERROR),
    ([(h2.WINDOW_UPDATE, 0, 0, b"\0\0\0\0")], h2.PROTOCOL_ERROR),
    ([(h2.SETTINGS, 0, 0, b"\0\0\0")], h2.FRAME_SIZE_ERROR),
])
def test_malformed_frame_gets_goaway_and_others_are_served(
    running: RunningServer, frames: list[tuple[int, int, int, bytes]], code: int
) -> None:
    """A connection error is answered GOAWAY with its error code and the connection closes;
    another connection is served as before."""
    client = RawClient(running.grpc_url)
    try:
        for frame in frames:
            client.send(*frame)
        assert client.goaway()[1] == code
        while client.frame() is not None:
            pass  # then the server closes
    finally:
        client.close()
    other = grpcclient.InferenceServerClient(running.grpc_url)
    try:
        assert other.is_server_live()
    finally:
        other.close()


def test_not_http2_is_refused(running: RunningServer) -> None:
    """Bytes that are not the HTTP/2 preface get GOAWAY(PROTOCOL_ERROR)."""
    host, port = running.grpc_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    kinds = {}
    while len(data) >= 9:  # our SETTINGS and WINDOW_UPDATE come first, then the GOAWAY
        length = int.from_bytes(data[:3], "big")
        kinds[data[3]] = data[9:9 + length]
        data = data[9 + length:]
    assert struct.unpack(">II", kinds[h2.GOAWAY][:8])[1] == h2.PROTOCOL_ERROR


def test_unknown_method_and_wrong_content_type(running: RunningServer) -> None:
    """An unknown method is UNIMPLEMENTED; a content-type that is not gRPC's is HTTP 415."""
    with grpc.insecure_channel(running.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/Nope")(b"", timeout=DEADLINE)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    client = RawClient(running.grpc_url)
    try:
        client.send(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1,
                    request_block(b"/inference.GRPCInferenceService/ServerLive").replace(
                        b"application/grpc", b"text/plain;xxxxx"))
        _, _, trailers = client.response(1)
        assert trailers[b":status"] == b"415"
    finally:
        client.close()


def _occupy(running: RunningServer, gate: FileGate) -> tuple[concurrent.futures.ThreadPoolExecutor, concurrent.futures.Future[object]]:
    """Hold the ``slow`` model's only instance with a call from another thread."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    holder = grpcclient.InferenceServerClient(running.grpc_url)
    x = grpcclient.InferInput("SLEEP_MS", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[-1]], dtype=np.int32))
    busy = pool.submit(holder.infer, "slow", [x])
    gate.wait_started()
    return pool, busy


def test_rst_stream_cancels_the_call(slow: RunningServer, slow_gate: FileGate) -> None:
    """RST_STREAM from the client cancels its call: a queued request leaves the queue."""
    pool, busy = _occupy(slow, slow_gate)
    client = RawClient(slow.grpc_url)
    try:
        client.request(1, INFER, slow_request(0))
        wait_until(lambda: slow.in_flight("slow") == 2, what="the second request queued")
        client.send(h2.RST_STREAM, 0, 1, struct.pack(">I", h2.CANCEL))
        wait_until(lambda: slow.in_flight("slow") == 1, what="the reset request gone")
        slow_gate.release()
        busy.result(timeout=DEADLINE)
    finally:
        slow_gate.release()
        client.close()
        pool.shutdown()


def test_grpc_timeout_is_deadline_exceeded(slow: RunningServer, slow_gate: FileGate) -> None:
    """A call whose grpc-timeout passes is cancelled and ends with DEADLINE_EXCEEDED."""
    pool, busy = _occupy(slow, slow_gate)
    client = RawClient(slow.grpc_url)
    try:
        client.request(1, INFER, slow_request(0), extra=((b"grpc-timeout", b"200m"),))
        _, _, trailers = client.response(1)
        assert trailers[b"grpc-status"] == b"4"
        wait_until(lambda: slow.in_flight("slow") == 1, what="the expired request gone")
    finally:
        slow_gate.release()
        busy.result(timeout=DEADLINE)
        client.close()
        pool.shutdown()


def test_message_over_the_limit_is_resource_exhausted(slow: RunningServer) -> None:
    """A message declared larger than the limit is refused with RESOURCE_EXHAUSTED at its
    5-byte prefix, before its body; the connection serves the next call."""
    client = RawClient(slow.grpc_url)
    try:
        client.send(h2.HEADERS, h2.END_HEADERS, 1, request_block(INFER))
        client.send(h2.DATA, 0, 1, b"\0" + (1 << 24).to_bytes(4, "big") + b"x" * 100)
        _, _, trailers = client.response(1)
        assert trailers[b"grpc-status"] == b"8"
        assert b"larger than max" in trailers[b"grpc-message"]
        client.request(3, b"/inference.GRPCInferenceService/ServerLive", b"")
        assert client.response(3)[2][b"grpc-status"] == b"0"
    finally:
        client.close()
    grpc_client = grpcclient.InferenceServerClient(slow.grpc_url)
    try:
        x = grpcclient.InferInput("SLEEP_MS", [1, 1], "INT32")
        x.set_data_from_numpy(np.array([[0]], dtype=np.int32))
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer("slow", [x], parameters={"padding": "p" * 10_000})
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        grpc_client.close()


# --------------------------------------------------------------------------------------------
# tritonclient


def _text(n: int) -> grpcclient.InferInput:
    x = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    x.set_data_from_numpy(np.array([[b"ab" * n]], dtype=object))
    return x


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(running: RunningServer, algorithm: str) -> None:
    """Requests compressed with gzip or deflate are decompressed."""
    client = grpcclient.InferenceServerClient(running.grpc_url)
    try:
        result = client.infer("string_case", [_text(1000)], compression_algorithm=algorithm)
        assert result.as_numpy("UPPER")[0, 0] == b"AB" * 1000
    finally:
        client.close()


def test_large_messages_both_ways(running: RunningServer) -> None:
    """A 6 MB request and its 6 MB response cross many frames and window updates intact."""
    client = grpcclient.InferenceServerClient(running.grpc_url)
    try:
        result = client.infer("string_case", [_text(3_000_000)])
        assert result.as_numpy("UPPER")[0, 0] == b"AB" * 3_000_000
    finally:
        client.close()


def test_asyncio_client_unary_and_stream(running: RunningServer) -> None:
    """tritonclient's asyncio client: concurrent unary calls and a bidirectional stream."""

    async def main() -> None:
        async with grpcclient_aio.InferenceServerClient(running.grpc_url) as client:
            results = await asyncio.gather(*(client.infer("string_case", [_text(i + 1)]) for i in range(20)))
            assert [r.as_numpy("UPPER")[0, 0] for r in results] == [b"AB" * (i + 1) for i in range(20)]

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(5):
                    yield {"model_name": "string_case", "inputs": [_text(i + 1)], "request_id": str(i)}

            seen = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None
                seen[result.get_response().id] = result.as_numpy("UPPER")[0, 0]
                if len(seen) == 5:
                    break
            assert seen == {str(i): b"AB" * (i + 1) for i in range(5)}

    asyncio.run(main())


def test_sync_stream_with_callback(running: RunningServer) -> None:
    """tritonclient's sync stream: every response arrives through the callback."""
    client = grpcclient.InferenceServerClient(running.grpc_url)
    answers: queue.Queue[object] = queue.Queue()
    try:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for i in range(3):
            client.async_stream_infer("string_case", [_text(i + 1)], request_id=str(i))
        got = {}
        for _ in range(3):
            result = answers.get(timeout=DEADLINE)
            assert not isinstance(result, Exception), result
            got[result.get_response().id] = result.as_numpy("UPPER")[0, 0]  # type: ignore[attr-defined]
        assert got == {str(i): b"AB" * (i + 1) for i in range(3)}
        client.stop_stream()
    finally:
        client.close()


def test_stop_releases_the_port_and_port_in_use_is_an_error(running: RunningServer) -> None:
    """serve_grpc_native reports its port, serves, stops on cancellation and frees the port;
    a port another server holds raises OSError."""
    taken = int(running.grpc_url.rsplit(":", 1)[1])

    async def main() -> None:
        async with Server(ServerOptions()) as server:
            async with anyio.create_task_group() as tg:
                port = await tg.start(functools.partial(serve_grpc_native, server, host="127.0.0.1", port=0))
                async with grpcclient_aio.InferenceServerClient(f"127.0.0.1:{port}") as client:
                    assert await client.is_server_live()
                tg.cancel_scope.cancel()
            async with anyio.create_task_group() as tg:
                again = await tg.start(functools.partial(serve_grpc_native, server, host="127.0.0.1", port=port))
                assert again == port
                tg.cancel_scope.cancel()
            with pytest.raises(OSError):
                await serve_grpc_native(server, host="127.0.0.1", port=taken)

    anyio.run(main)


def test_a_stop_by_cancellation_closes_the_sockets_before_it_returns() -> None:
    """Cancelling serve_grpc_native ends with every connection's socket closed: a transport
    closes its socket on a later loop turn, and the wait for that must survive the
    cancellation (an embedding program that ends its loop at once would otherwise leave the
    socket open)."""

    async def main() -> None:
        async with Server(ServerOptions()) as server:
            async with anyio.create_task_group() as tg:
                port = await tg.start(functools.partial(
                    serve_grpc_native, server, host="127.0.0.1", port=0, shutdown_timeout=0.1))
                client = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
                client.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0))
                received = await anyio.to_thread.run_sync(client.recv, 65536)  # the server's SETTINGS
                tg.cancel_scope.cancel()  # the client never acks the stop's PING: aborted
            try:
                client.setblocking(False)
                while chunk := client.recv(65536):  # raises BlockingIOError if still open
                    received += chunk
                assert received, "the server sent nothing"
            finally:
                client.close()

    anyio.run(main)


def test_random_frames_never_break_the_server(running: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """Random frame sequences (any type, flags, stream, payload) after the preface end in an
    answer, a GOAWAY or nothing, never in a failure of the server's own; it serves on."""
    import random

    rng = random.Random(20261203)
    kinds = [h2.DATA, h2.HEADERS, h2.PRIORITY, h2.RST_STREAM, h2.SETTINGS, h2.PUSH_PROMISE, h2.PING, h2.GOAWAY,
             h2.WINDOW_UPDATE, h2.CONTINUATION, 0x42]
    for _ in range(60):
        client = RawClient(running.grpc_url)
        try:
            for _ in range(rng.randint(1, 6)):
                kind = rng.choice(kinds)
                stream_id = rng.choice([0, 1, 2, 3, 5, 2**31 - 1])
                if kind == h2.HEADERS and rng.random() < 0.5:
                    payload = request_block(rng.choice([INFER, b"/inference.GRPCInferenceService/ServerLive", b"/x"]))
                    payload = payload[:rng.randint(0, len(payload))]
                else:
                    payload = rng.randbytes(rng.choice([0, 1, 4, 5, 6, 8, 13, 100]))
                try:
                    client.send(kind, rng.randint(0, 255), stream_id, payload)
                except OSError:
                    break  # the server closed it (GOAWAY) already
            try:
                client.send(h2.PING, 0, 0, b"lastping")
            except OSError:
                continue
            while (got := client.frame()) is not None:
                if got[0] == h2.PING and got[1] & h2.ACK and got[3] == b"lastping":
                    break
        finally:
            client.close()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    other = grpcclient.InferenceServerClient(running.grpc_url)
    try:
        assert other.is_server_live()
    finally:
        other.close()


def test_too_many_pings_without_data_get_goaway(running: RunningServer) -> None:
    """gRPC's ping policing, grpcio's defaults: PINGs with no call open and nothing sent in
    between are strikes, the third ends the connection with GOAWAY ENHANCE_YOUR_CALM; PINGs
    each after an answer are not."""
    client = RawClient(running.grpc_url)
    try:
        for stream_id in (1, 3, 5, 7):
            client.send(h2.PING, 0, 0, b"pingpong")
            client.request(stream_id, b"/inference.GRPCInferenceService/ServerLive", b"")
            assert client.response(stream_id)[2][b"grpc-status"] == b"0"
        for _ in range(4):
            client.send(h2.PING, 0, 0, b"pingpong")
        last, code = client.goaway()
        assert code == h2.ENHANCE_YOUR_CALM and last == 7
    finally:
        client.close()


def test_native_is_the_default_and_the_flag_and_variable_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    """``dagserve serve`` uses the native gRPC server unless --grpc-server or
    DAGSERVE_GRPC_SERVER says grpcio; FrontendOptions refuses any other name."""
    from dagserve.cli import build_parser
    from dagserve.frontends.runner import FrontendOptions

    monkeypatch.delenv("DAGSERVE_GRPC_SERVER", raising=False)
    base = ["serve", "--model-repository", "repo"]
    assert build_parser().parse_args(base).grpc_server == "native"
    assert FrontendOptions().grpc_server == "native"
    assert build_parser().parse_args([*base, "--grpc-server", "grpcio"]).grpc_server == "grpcio"
    monkeypatch.setenv("DAGSERVE_GRPC_SERVER", "grpcio")
    assert build_parser().parse_args(base).grpc_server == "grpcio"
    with pytest.raises(ValueError, match="grpc-server"):
        FrontendOptions(grpc_server="h2")


def test_stop_answers_the_calls_sent_before_it_and_refuses_later_ones(slow_gate: FileGate) -> None:
    """A graceful stop sends GOAWAY(2^31-1) and a PING; once the client acks it, GOAWAY with
    the last stream id: the call in flight is answered, a stream sent after is ignored
    (refused), and the connection closes after the last answer."""
    import contextlib

    stack = contextlib.ExitStack()
    running = stack.enter_context(serve_in_thread(REPOS / "slow", http=False, metrics=False, grpc_server="native"))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    stopping: concurrent.futures.Future[None] | None = None
    client = RawClient(running.grpc_url)
    try:
        client.request(1, INFER, slow_request(-1))
        slow_gate.wait_started()
        stopping = pool.submit(stack.close)
        goaways = []
        while len(goaways) < 2:
            got = client.frame()
            assert got is not None, "closed before the final GOAWAY"
            kind, flags, _, payload = got
            if kind == h2.GOAWAY:
                goaways.append(struct.unpack(">II", payload[:8]))
            elif kind == h2.PING and not flags & h2.ACK:
                client.send(h2.PING, h2.ACK, 0, payload)
        assert goaways == [(2**31 - 1, h2.NO_ERROR), (1, h2.NO_ERROR)]
        client.request(3, b"/inference.GRPCInferenceService/ServerLive", b"")  # after the GOAWAY: refused
        slow_gate.release()
        _, _, trailers = client.response(1)
        assert trailers[b"grpc-status"] == b"0", trailers
        while (got := client.frame()) is not None:
            assert got[2] != 3, "a stream past the GOAWAY's last id was answered"
        stopping.result(timeout=DEADLINE)
    finally:
        slow_gate.release()
        client.close()
        if stopping is not None:
            stopping.result(timeout=DEADLINE)
        stack.close()
        pool.shutdown()


# --------------------------------------------------------------------------------------------
# Compressed responses (--grpc-infer-response-compression-level), on either server

_WBITS = {b"gzip": 31, b"deflate": 15}


def _expected_encoding(level: str, accept: bytes | None) -> bytes | None:
    """What Triton's gRPC answers with: of gzip and deflate, those the client accepts; low
    takes the first, medium the middle one, high the last."""
    accepted = [name for name in (b"gzip", b"deflate") if accept is not None and name in accept]
    if level == "none" or not accepted:
        return None
    return accepted[{"low": 0, "medium": len(accepted) // 2, "high": -1}[level]]


def _text_request(n: int, request_id: str = "") -> bytes:
    request = pb.ModelInferRequest(model_name="string_case", id=request_id)
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"ab" * n)
    return request.SerializeToString()


def _send(raw: RawClient, stream_id: int, path: bytes, body: bytes, accept: bytes | None) -> None:
    """A whole request: its HEADERS (with ``grpc-accept-encoding: accept`` unless ``None``),
    then ``body`` in DATA frames of at most 16384 bytes (HTTP/2's default largest frame)."""
    extra = ((b"grpc-accept-encoding", accept),) if accept is not None else ()
    raw.send(h2.HEADERS, h2.END_HEADERS, stream_id, request_block(path, extra))
    for start in range(0, len(body), 16384):
        raw.send(h2.DATA, h2.END_STREAM if start + 16384 >= len(body) else 0, stream_id, body[start:start + 16384])


def _received(data: bytes, encoding: bytes | None) -> list[bytes]:
    """The messages of ``data``, each checked to be compressed with ``encoding`` (flag 1) or,
    with none, sent as it is (flag 0), and decompressed."""
    found = []
    while data:
        flag, size = data[0], int.from_bytes(data[1:5], "big")
        message, data = data[5:5 + size], data[5 + size:]
        assert flag == (0 if encoding is None else 1)
        found.append(message if encoding is None else zlib.decompress(message, _WBITS[encoding]))
    return found


@pytest.mark.parametrize("level", ["none", "low", "medium", "high"])
@pytest.mark.parametrize("grpc_server", ["native", "grpcio"])
def test_infer_responses_are_compressed_as_triton_compresses_them(grpc_server: str, level: str) -> None:
    """At each level tritonclient gets right answers (unary and streaming), and on the wire a
    ModelInfer response is compressed with the algorithm gRPC's core picks from the client's
    grpc-accept-encoding (grpc-encoding header, flag byte 1, zlib data), small (on the event
    loop) and large (in a thread); with no algorithm accepted, or level none, it is not."""
    with serve_in_thread(REPOS / "triton_python", http=False, metrics=False, grpc_server=grpc_server,
                         grpc_infer_response_compression_level=level) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        answers: queue.Queue[object] = queue.Queue()
        try:
            assert client.infer("string_case", [_text(30_000)]).as_numpy("UPPER")[0, 0] == b"AB" * 30_000
            client.start_stream(callback=lambda result, error: answers.put(error or result))
            for i in (1, 20_000):
                client.async_stream_infer("string_case", [_text(i)], request_id=str(i))
            got = {}
            for _ in range(2):
                result = answers.get(timeout=DEADLINE)
                assert not isinstance(result, Exception), result
                got[result.get_response().id] = result.as_numpy("UPPER")[0, 0]  # type: ignore[attr-defined]
            assert got == {"1": b"AB", "20000": b"AB" * 20_000}
            client.stop_stream()
        finally:
            client.close()

        raw = RawClient(running.grpc_url, window=1 << 24, connection_window=1 << 30)
        try:
            stream_id = 1
            for accept in (None, b"identity, deflate, gzip", b"gzip", b"deflate", b"identity"):
                encoding = _expected_encoding(level, accept)
                for n in (1000, 20_000):  # 2 kB and 40 kB answers: compressed on the loop, in a thread
                    _send(raw, stream_id, INFER, grpc_message(_text_request(n)), accept)
                    headers, data, trailers = raw.response(stream_id)
                    assert trailers[b"grpc-status"] == b"0", trailers
                    assert headers.get(b"grpc-encoding") == encoding, (accept, n)
                    (message,) = _received(data, encoding)
                    assert pb.ModelInferResponse.FromString(message).raw_output_contents[0][4:] == b"AB" * n
                    stream_id += 2
        finally:
            raw.close()


@pytest.mark.parametrize("grpc_server", ["native", "grpcio"])
def test_stream_responses_are_compressed_one_by_one(grpc_server: str) -> None:
    """ModelStreamInfer: each response message of the stream is compressed on its own, with the
    algorithm the stream's HEADERS name."""
    with serve_in_thread(REPOS / "triton_python", http=False, metrics=False, grpc_server=grpc_server,
                         grpc_infer_response_compression_level="high") as running:
        raw = RawClient(running.grpc_url, window=1 << 24, connection_window=1 << 30)
        try:
            path = b"/inference.GRPCInferenceService/ModelStreamInfer"
            _send(raw, 1, path, b"".join(grpc_message(_text_request(n, str(n))) for n in (10, 20_000)), b"gzip")
            headers, data, trailers = raw.response(1)
            assert trailers[b"grpc-status"] == b"0", trailers
            assert headers[b"grpc-encoding"] == b"gzip"
            answers = {}
            for message in _received(data, b"gzip"):
                response = pb.ModelStreamInferResponse.FromString(message)
                assert not response.error_message
                answers[response.infer_response.id] = response.infer_response.raw_output_contents[0][4:]
            assert answers == {"10": b"AB" * 10, "20000": b"AB" * 20_000}
        finally:
            raw.close()


def test_only_inference_responses_are_compressed() -> None:
    """On the native server, as on Triton, the level applies to ModelInfer and ModelStreamInfer
    only: a ModelConfig answer to a client that accepts gzip stays uncompressed."""
    with serve_in_thread(REPOS / "triton_python", http=False, metrics=False, grpc_server="native",
                         grpc_infer_response_compression_level="low") as running:
        raw = RawClient(running.grpc_url)
        try:
            raw.request(1, b"/inference.GRPCInferenceService/ModelConfig",
                        pb.ModelConfigRequest(name="string_case").SerializeToString(),
                        extra=((b"grpc-accept-encoding", b"gzip"),))
            headers, data, trailers = raw.response(1)
            assert trailers[b"grpc-status"] == b"0" and b"grpc-encoding" not in headers
            (message,) = _received(data, None)
            assert pb.ModelConfigResponse.FromString(message).config.name == "string_case"
        finally:
            raw.close()


def test_compression_level_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dagserve serve --grpc-infer-response-compression-level` (any case, as Triton takes it)
    and DAGSERVE_GRPC_INFER_RESPONSE_COMPRESSION_LEVEL set the level, default none; an unknown
    level is refused by the parser and by FrontendOptions."""
    from dagserve.cli import build_parser
    from dagserve.frontends.runner import FrontendOptions

    monkeypatch.delenv("DAGSERVE_GRPC_INFER_RESPONSE_COMPRESSION_LEVEL", raising=False)
    base = ["serve", "--model-repository", "repo"]
    flag = "--grpc-infer-response-compression-level"
    assert build_parser().parse_args(base).grpc_infer_response_compression_level == "none"
    assert build_parser().parse_args([*base, flag, "HIGH"]).grpc_infer_response_compression_level == "high"
    monkeypatch.setenv("DAGSERVE_GRPC_INFER_RESPONSE_COMPRESSION_LEVEL", "medium")
    assert build_parser().parse_args(base).grpc_infer_response_compression_level == "medium"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, flag, "max"])
    with pytest.raises(ValueError, match="compression-level"):
        FrontendOptions(grpc_infer_response_compression_level="max")
