"""Property-based fuzz of the HTTP and gRPC frontends (hypothesis): no client error is a 5xx.

Generates inference requests that are almost right (real model and input names, every
datatype, forged shapes, wrong content fields, truncated binary sections, bogus
``Inference-Header-Content-Length`` and ``Content-Encoding``, nested JSON, random parameters)
and plain garbage, sends them to a real server (``dagserve.testing.serve_in_thread`` over
``tests/repos/triton_python``) and checks the property: HTTP answers below 500 (or 501 for an
unsupported feature such as shared memory), gRPC answers no INTERNAL / UNKNOWN / DATA_LOSS,
and the server stays live. ``tests/frontends/test_fuzz.py`` runs a bounded, derandomized
share of it in CI; this script runs the long campaign whose result docs/security.md records.

The long campaign has two phases per protocol: hypothesis generates ``--seeds`` cases (each
checked), then ``--cases`` mutants of them are checked — byte flips, truncations, splices and
JSON-token insertions for HTTP bodies; dimension, datatype, name and content changes for gRPC
messages. Hypothesis costs ~15-20 ms to generate one of these cases on a busy 2-core machine,
a mutation ~20 µs, so the mutants are what make 100k cases per protocol affordable.

Run: python bench/fuzz_wire.py [--cases 100000] [--seeds 1000]   (needs: pip install hypothesis)
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import random
import time
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

REPO = Path(__file__).resolve().parent.parent / "tests" / "repos" / "triton_python"
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]
HTTP_OK = frozenset(range(200, 500)) | {501}
GRPC_BAD = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})

names = st.sampled_from(["INPUT0", "INPUT1", "TEXT", "X", ""]) | st.text(max_size=6)
datatypes = st.sampled_from(DATATYPES) | st.sampled_from(["", "FP128", "TYPE_FP32", "fp32"]) | st.text(max_size=4)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=24,
)
dims = st.one_of(st.integers(-2, 6), st.integers(-(2**64), 2**64), st.booleans(), st.text(max_size=2), st.floats())
shapes = st.lists(st.integers(0, 5), max_size=3) | st.lists(dims, max_size=4)
params = st.dictionaries(
    st.sampled_from(["binary_data_size", "binary_data", "shared_memory_region", "classification", "x"]),
    st.integers(-4, 80) | json_values, max_size=2,
)
numbers = st.lists(st.integers(-3, 300) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
                   | st.text(max_size=3), max_size=12)
data = numbers | json_values | st.lists(numbers, max_size=3)

http_inputs = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={"data": data, "parameters": params},
)
http_docs = st.fixed_dictionaries(
    {"inputs": st.lists(http_inputs, max_size=4)},
    optional={
        "id": st.text(max_size=4) | json_values,
        "parameters": params | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": names}, optional={"parameters": params}), max_size=3)
        | json_values,
    },
)
paths = st.sampled_from([
    "/v2/models/add_sub/infer", "/v2/models/string_case/infer", "/v2/models/batched_scale/infer",
    "/v2/models/add_sub/versions/1/infer", "/v2/models/add_sub/versions/x/infer", "/v2/models/nope/infer",
    "/v2/models/add_sub/generate", "/v2/repository/index",
])


@st.composite
def http_cases(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    """``(path, headers, body)`` of one POST."""
    path = draw(paths)
    kind = draw(st.sampled_from(["json", "binary", "garbage", "value"]))
    headers: dict[str, str] = {}
    if kind == "json":
        body = json.dumps(draw(http_docs)).encode()
    elif kind == "binary":
        header = json.dumps(draw(http_docs)).encode()
        body = header + draw(st.binary(max_size=96))
        length = draw(st.sampled_from(["exact", "zero", "random", "text"]))
        headers["Inference-Header-Content-Length"] = {
            "exact": str(len(header)), "zero": "0", "random": str(draw(st.integers(-5, len(body) + 5))),
            "text": draw(st.text(alphabet="0123456789abc -", max_size=4)),
        }[length]
    elif kind == "garbage":
        body = draw(st.binary(max_size=200))
    else:
        body = json.dumps(draw(json_values)).encode()
    encoding = draw(st.sampled_from([None, None, "gzip", "deflate", "br", "gzip-claimed"]))
    if encoding == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    elif encoding in ("deflate", "br", "gzip-claimed"):
        headers["Content-Encoding"] = encoding.removesuffix("-claimed")
    return path, headers, body


@st.composite
def grpc_cases(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    """One ModelInferRequest, built field by field."""
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["add_sub", "string_case", "batched_scale", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "2", "x", "-1"])),
        id=draw(st.text(max_size=4)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        tensor = request.inputs.add(
            name=draw(names), datatype=draw(datatypes),
            shape=draw(st.lists(st.integers(-3, 6) | st.integers(-(2**63), 2**63 - 1), max_size=4)),
        )
        if draw(st.booleans()):
            tensor.parameters[draw(st.sampled_from(["shared_memory_region", "x"]))].int64_param = 1
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        else:
            field = draw(st.sampled_from(["bool", "int", "int64", "uint", "uint64", "fp32", "fp64", "bytes", "none"]))
            values = {
                "bool": st.lists(st.booleans(), max_size=8),
                "int": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
                "int64": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
                "uint": st.lists(st.integers(0, 2**32 - 1), max_size=8),
                "uint64": st.lists(st.integers(0, 2**64 - 1), max_size=8),
                "fp32": st.lists(st.floats(width=32), max_size=8),
                "fp64": st.lists(st.floats(), max_size=8),
                "bytes": st.lists(st.binary(max_size=8), max_size=8),
                "none": st.just([]),
            }[field]
            if field != "none":
                getattr(tensor.contents, f"{field}_contents").extend(draw(values))
    if draw(st.booleans()):  # a raw section that does not match the inputs
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for _ in range(draw(st.integers(0, 2))):
        out = request.outputs.add(name=draw(names))
        if draw(st.booleans()):
            out.parameters[draw(st.sampled_from(["binary_data", "shared_memory_region", "classification"]))].bool_param = True
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "sequence_id", "x", "binary_data_output"]), max_size=3)):
        choice = draw(st.sampled_from(["int64", "string", "bool", "double"]))
        param = request.parameters[key]
        if choice == "int64":
            param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif choice == "string":
            param.string_param = draw(st.text(max_size=4))
        elif choice == "bool":
            param.bool_param = draw(st.booleans())
        else:
            param.double_param = draw(st.floats())
    return request


class Target:
    """Connections to one running server, reopened when the server closes one."""

    def __init__(self, http_url: str, grpc_url: str) -> None:
        self.host, port = http_url.rsplit(":", 1)
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None
        self.channel = grpc.insecure_channel(grpc_url)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.http_count = self.grpc_count = 0

    def close(self) -> None:
        """Close the HTTP connection and the gRPC channel."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.channel.close()

    def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                reply = self.conn.getresponse()
                text = reply.read()
                if reply.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return reply.status, text
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def check_http(self, case: tuple[str, dict[str, str], bytes]) -> None:
        """Assert the property for one HTTP case."""
        path, headers, body = case
        status, text = self.post(path, headers, body)
        self.http_count += 1
        assert status in HTTP_OK, f"{status} {text[:300]!r} for POST {path} {headers} {body[:300]!r}"

    def check_grpc(self, request: service_pb2.ModelInferRequest) -> None:
        """Assert the property for one gRPC case."""
        self.grpc_count += 1
        try:
            self.stub.ModelInfer(request, timeout=60)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            assert code not in GRPC_BAD, f"{code} {exc.details()} for {request}"  # type: ignore[attr-defined]

    def live(self) -> bool:
        status, _ = self.post_get("/v2/health/live")
        return status == 200

    def post_get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()


def campaign(target: Target, cases: int, *, derandomize: bool = False) -> None:
    """Run ``cases`` HTTP cases and ``cases`` gRPC cases; raises on the first violation."""
    common = {"max_examples": cases, "deadline": None, "database": None, "derandomize": derandomize,
              "suppress_health_check": list(HealthCheck)}

    @settings(**common)
    @given(http_cases())
    def http_property(case: Any) -> None:
        target.check_http(case)

    @settings(**common)
    @given(grpc_cases())
    def grpc_property(request: Any) -> None:
        target.check_grpc(request)

    http_property()
    grpc_property()
    assert target.live(), "the server stopped answering"


_TOKENS = [b"[", b"]", b"{", b"}", b",", b":", b'"', b"-1", b"1e999", b"null", b"true", b"\\u0000",
           b'"shape":[4294967296]', b'"binary_data_size":', b"[" * 200, b"\xff\xfe"]


def mutate_http(rng: random.Random, case: tuple[str, dict[str, str], bytes]) -> tuple[str, dict[str, str], bytes]:
    """A cheap random variant of an HTTP case."""
    path, headers, body = case
    headers = dict(headers)
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and data:  # flip a byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:  # truncate
            del data[rng.randrange(len(data)):]
        elif op == 2:  # insert a JSON token
            at = rng.randint(0, len(data))
            data[at:at] = rng.choice(_TOKENS)
        elif op == 3 and data:  # duplicate a slice
            a = rng.randrange(len(data))
            b = min(len(data), a + rng.randint(1, 32))
            data[a:a] = data[a:b]
        elif op == 4:  # change the binary header length
            headers["Inference-Header-Content-Length"] = str(rng.randint(-2, len(data) + 2))
        elif op == 5 and "Content-Encoding" in headers:
            headers.pop("Content-Encoding")
    return path, headers, bytes(data)


def mutate_grpc(rng: random.Random, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    """A cheap random variant of a gRPC case."""
    out = service_pb2.ModelInferRequest()
    out.CopyFrom(request)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        if op == 0 and out.inputs:
            tensor = rng.choice(out.inputs)
            tensor.shape.append(rng.choice([0, 1, 4, -1, 2**31, 2**62]))
        elif op == 1 and out.inputs:
            rng.choice(out.inputs).datatype = rng.choice(DATATYPES + ["", "X"])
        elif op == 2 and out.inputs:
            rng.choice(out.inputs).name = rng.choice(["INPUT0", "INPUT1", "TEXT", "X", ""])
        elif op == 3 and out.raw_input_contents:
            i = rng.randrange(len(out.raw_input_contents))
            raw = out.raw_input_contents[i]
            out.raw_input_contents[i] = raw[: rng.randint(0, len(raw))] + rng.randbytes(rng.randint(0, 8))
        elif op == 4:
            out.raw_input_contents.append(rng.randbytes(rng.choice([0, 4, 16, 17])))
        elif op == 5 and out.inputs:
            del out.inputs[rng.randrange(len(out.inputs))]
        elif op == 6:
            out.model_name = rng.choice(["add_sub", "string_case", "batched_scale", "nope"])
    return out


def long_campaign(target: Target, cases: int, seeds: int, seed: int = 0) -> None:
    """``seeds`` hypothesis cases per protocol, then ``cases`` mutants of them per protocol."""
    http_seeds: list[Any] = []
    grpc_seeds: list[Any] = []
    common = {"max_examples": seeds, "deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

    @settings(**common)
    @given(http_cases())
    def http_property(case: Any) -> None:
        http_seeds.append(case)
        target.check_http(case)

    @settings(**common)
    @given(grpc_cases())
    def grpc_property(request: Any) -> None:
        grpc_seeds.append(request)
        target.check_grpc(request)

    http_property()
    grpc_property()
    rng = random.Random(seed)
    for _ in range(cases):
        target.check_http(mutate_http(rng, rng.choice(http_seeds)))
    for _ in range(cases):
        target.check_grpc(mutate_grpc(rng, rng.choice(grpc_seeds)))
    assert target.live(), "the server stopped answering"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="mutants per protocol (default 100000)")
    parser.add_argument("--seeds", type=int, default=1000, help="hypothesis cases per protocol (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mutations")
    args = parser.parse_args()
    from dagserve.testing import serve_in_thread

    with serve_in_thread(REPO, metrics=False) as running:
        target = Target(running.http_url, running.grpc_url)
        start = time.perf_counter()
        try:
            long_campaign(target, args.cases, args.seeds, args.seed)
        finally:
            target.close()
        took = time.perf_counter() - start
    print(f"fuzz: {target.http_count} HTTP and {target.grpc_count} gRPC cases in {took:.0f} s "
          f"({args.seeds} hypothesis cases and {args.cases} mutants per protocol, mutation seed {args.seed}): "
          "no 5xx / INTERNAL, server live at the end")


if __name__ == "__main__":
    main()
