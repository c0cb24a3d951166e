"""Pipelines with a decoupled step: every response of that step flows through the steps
downstream of it and becomes one response of the pipeline, which is decoupled itself."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dagserve import (
    ConfigError,
    InferRequest,
    InferResponse,
    ModelExecutionError,
    Pipeline,
    RequestedOutput,
    Server,
    ServerOptions,
    UnsupportedError,
    loop,
)
from dagserve.testing import serve_in_thread

pytestmark = pytest.mark.anyio

REPO = Path(__file__).parent.parent / "repos" / "pipelines_decoupled"
MEMBERS = ("split", "words", "words_reversed", "shout")


def serve(*models: str) -> Server:
    """A server of the decoupled-pipeline repository with the members and ``models`` loaded."""
    return Server(
        ServerOptions(model_repository=REPO, model_control_mode="explicit", load_models=(*MEMBERS, *models))
    )


def text(line: str, **parameters: object) -> InferRequest:
    return InferRequest(inputs={"TEXT": np.array([line.encode()], dtype=object)}, parameters=parameters)


async def collect(server: Server, pipeline: str, request: InferRequest) -> list[InferResponse]:
    got: list[InferResponse] = []

    async def emit(response: InferResponse) -> None:
        got.append(response)

    await server.infer_stream(pipeline, "", request, emit)
    return got


def words(responses: list[InferResponse], output: str = "LOUD") -> list[str]:
    return [r.outputs[output][0].decode() for r in responses if output in r.outputs]


async def test_each_response_runs_the_downstream_steps_in_order() -> None:
    """Three words give three responses, shouted and in order, each with the word count
    (which does not depend on the decoupled step), then the empty final response."""
    async with serve("chat") as server:
        got = await collect(server, "chat", text("to be streamed"))
        assert words(got) == ["TO", "BE", "STREAMED"]
        assert [int(r.outputs["INDEX"][0]) for r in got[:-1]] == [0, 1, 2]
        assert [int(r.outputs["COUNT"][0]) for r in got[:-1]] == [3, 3, 3]
        assert [r.final for r in got] == [False, False, False, True] and got[-1].outputs == {}
        assert all(r.model_name == "chat" for r in got)
        steps = {
            s["name"]: s["success"]["count"] for s in server.statistics("chat")["model_stats"][0]["steps"]
        }
        assert steps == {"split": 1, "stream": 1, "upper": 3}
        # No word: the decoupled step answers nothing, so only the final response comes.
        empty = await collect(server, "chat", text(""))
        assert len(empty) == 1 and empty[0].final and empty[0].outputs == {}


async def test_config_says_decoupled_and_unary_infer_is_refused() -> None:
    """The pipeline (and a Triton ensemble of the same steps) reports itself decoupled and
    refuses a unary call as any decoupled model does."""
    async with serve("chat", "chat_ensemble") as server:
        for name in ("chat", "chat_ensemble"):
            assert server.model_config(name)["model_transaction_policy"] == {"decoupled": True}
            with pytest.raises(UnsupportedError, match="decoupled"):
                await server.infer(name, "", text("hello"))
        got = await collect(server, "chat_ensemble", text("a b"))
        assert words(got) == ["A", "B"]
        assert server.model_config("shout")["model_transaction_policy"] == {"decoupled": False}


async def test_a_failing_downstream_step_ends_the_stream_naming_it() -> None:
    """'boom' fails at the step after the decoupled one: the first word's response came, then
    the error names that step and its model (not the decoupled step), and the server goes on."""
    async with serve("chat") as server:
        got: list[InferResponse] = []

        async def emit(response: InferResponse) -> None:
            got.append(response)

        with pytest.raises(ModelExecutionError, match=r"^pipeline 'chat', step 'upper' \(model 'shout'\): "):
            await server.infer_stream("chat", "", text("fine boom never"), emit)
        assert words(got) == ["FINE"] and not got[-1].final
        stats = server.statistics("chat")["model_stats"][0]
        assert stats["inference_stats"]["fail"]["count"] == 1
        assert {s["name"]: s["fail"]["count"] for s in stats["steps"]} == {
            "split": 0,
            "stream": 0,
            "upper": 1,
        }
        assert words(await collect(server, "chat", text("still fine"))) == ["STILL", "FINE"]


async def test_cancelling_the_caller_cancels_the_decoupled_member() -> None:
    """A caller that stops after the first response cancels the member stuck on 'slow' (30 s):
    the call and the server's shutdown return at once."""
    start = time.perf_counter()
    async with serve("chat") as server:
        got: list[InferResponse] = []
        with anyio.CancelScope() as scope:

            async def emit(response: InferResponse) -> None:
                got.append(response)
                scope.cancel()

            await server.infer_stream("chat", "", text("quick slow"), emit)
        assert words(got) == ["QUICK"]
    assert time.perf_counter() - start < 10


async def test_requested_outputs_prune_the_downstream_steps() -> None:
    """Asking for INDEX alone streams without calling the shouting step."""
    async with serve("chat") as server:
        request = text("one two")
        request = InferRequest(inputs=request.inputs, outputs=(RequestedOutput(name="INDEX"),))
        got = await collect(server, "chat", request)
        assert [list(r.outputs) for r in got] == [["INDEX"], ["INDEX"], []]
        steps = {
            s["name"]: s["success"]["count"] for s in server.statistics("chat")["model_stats"][0]["steps"]
        }
        assert steps["upper"] == 0


async def test_switch_between_two_decoupled_steps() -> None:
    """A switch picks which decoupled step streams; the join after it reads whichever ran."""
    async with serve("chat_switch") as server:
        assert words(await collect(server, "chat_switch", text("a b c"))) == ["A", "B", "C"]
        backward = await collect(server, "chat_switch", text("a b c", order="reversed"))
        assert words(backward) == ["C", "B", "A"]
        assert [int(r.outputs["INDEX"][0]) for r in backward[:-1]] == [2, 1, 0]


async def test_nested_decoupled_pipeline_streams_through_the_outer_one() -> None:
    """A pipeline calling the decoupled pipeline is decoupled and streams its responses on."""
    async with serve("chat", "chat_nested") as server:
        assert server.model_config("chat_nested")["model_transaction_policy"] == {"decoupled": True}
        got = await collect(server, "chat_nested", text("x y"))
        assert words(got, "LOUDER") == ["X", "Y"]
        assert [int(r.outputs["COUNT"][0]) for r in got[:-1]] == [2, 2]


async def test_side_by_side_decoupled_steps_each_stream() -> None:
    """Two independent decoupled steps both stream; each response carries the outputs of one
    of them (so those are optional) and every output that depends on neither."""
    p = Pipeline("both")
    p.input("TEXT", "BYTES", [1])
    split = p.step("split", "split", inputs={"TEXT": "TEXT"})
    p.step("fwd", "words", inputs={"WORDS": split["WORDS"]})
    p.step("bwd", "words_reversed", inputs={"WORDS": split["WORDS"]})
    p.step("loud", "shout", inputs={"WORD": "bwd.WORD"})
    p.output("FORWARD", "fwd.WORD", optional=True)
    p.output("BACKWARD", "loud.LOUD", optional=True)
    p.output("COUNT", split["COUNT"])
    async with serve() as server:
        await server.add_pipeline(p.build())
        got = await collect(server, "both", text("p q r"))
    assert len(got) == 7 and got[-1].final
    assert words(got, "FORWARD") == ["p", "q", "r"] and words(got, "BACKWARD") == ["R", "Q", "P"]
    assert all(("FORWARD" in r.outputs) != ("BACKWARD" in r.outputs) for r in got[:-1])
    assert all(int(r.outputs["COUNT"][0]) == 3 for r in got[:-1])


async def test_pipelines_the_executor_cannot_stream_are_refused_at_load() -> None:
    """Chained decoupled steps, mapping or looping over one, a step needing two at once, and
    an output that only some responses carry but that is not optional are load-time errors."""
    async with serve("chat_chained") as server:
        reason = next(e["reason"] for e in server.repository_index() if e["name"] == "chat_chained")
        assert (
            "pipeline 'chat_chained', step 'second': decoupled step 'second' (model 'words') is downstream of "
            "decoupled step 'first' (model 'words'): a path through a pipeline may hold at most one decoupled step"
        ) in reason

        def base(name: str) -> Pipeline:
            p = Pipeline(name)
            p.input("TEXT", "BYTES", [1])
            p.input("LINES", "BYTES", [-1, -1])
            p.step("split", "split", inputs={"TEXT": "TEXT"})
            return p

        mapped = base("mapped")
        mapped.step("each", "words", inputs={"WORDS": "LINES"}, map_over=["WORDS"])
        mapped.output("WORD", "each.WORD")
        looped = base("looped")
        looped.step("again", "words", inputs={"WORDS": "split.WORDS"}, loop=loop(3, carry={"WORDS": "WORD"}))
        looped.output("WORD", "again.WORD")
        joined = base("joined")
        joined.step("a", "words", inputs={"WORDS": "split.WORDS"})
        joined.step("b", "words_reversed", inputs={"WORDS": "split.WORDS"})
        joined.step("both", "shout", inputs={"WORD": "a.WORD"}, when="b.INDEX == 0")
        joined.output("LOUD", "both.LOUD", optional=True)
        required = base("required")
        required.step("a", "words", inputs={"WORDS": "split.WORDS"})
        required.step("b", "words_reversed", inputs={"WORDS": "split.WORDS"})
        required.output("A", "a.WORD")
        required.output("B", "b.WORD", optional=True)
        expected = {
            mapped: "pipeline 'mapped', step 'each': model 'words' is decoupled (0..N responses per request): "
            "a step cannot map over it",
            looped: "pipeline 'looped', step 'again': model 'words' is decoupled (0..N responses per request): "
            "a step cannot loop it",
            joined: "pipeline 'joined', step 'both': needs the responses of decoupled steps 'a' and 'b' together",
            required: "pipeline 'required': output 'A' comes only with the responses of decoupled step 'a', "
            "not with those of the others: declare it optional",
        }
        for pipeline, message in expected.items():
            with pytest.raises(ConfigError) as info:
                await server.add_pipeline(pipeline.build())
            assert message in str(info.value)


def test_streams_over_grpc_and_http() -> None:
    """tritonclient's streaming API gets one response per word, then the final flag; the model
    config over gRPC says decoupled; a unary call is refused; HTTP /generate_stream sends one
    event per word and the error of a later step in band."""
    load = (*MEMBERS, "chat")
    with serve_in_thread(REPO, metrics=False, model_control_mode="explicit", load_models=load) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        config = client.get_model_config("chat", as_json=True)["config"]
        assert config["model_transaction_policy"] == {"decoupled": True}
        results: queue.Queue[object] = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put(error if error else result))
        for request_id, line in (("ok", b"hello streaming world"), ("bad", b"boom")):
            x = grpcclient.InferInput("TEXT", [1], "BYTES")
            x.set_data_from_numpy(np.array([line], dtype=object))
            client.async_stream_infer("chat", [x], request_id=request_id, enable_empty_final_response=True)
        client.stop_stream()
        x = grpcclient.InferInput("TEXT", [1], "BYTES")
        x.set_data_from_numpy(np.array([b"unary"], dtype=object))
        with pytest.raises(InferenceServerException, match="decoupled") as info:
            client.infer("chat", [x])
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
        client.close()
        url = f"http://{running.http_url}/v2/models/chat/generate_stream"
        answer = httpx.post(url, json={"TEXT": "fine boom"}, timeout=60)
    events = [json.loads(e[len("data: ") :]) for e in answer.text.splitlines() if e.startswith("data: ")]
    assert [e.get("LOUD") for e in events] == ["FINE", None]
    assert "pipeline 'chat', step 'upper' (model 'shout')" in events[1]["error"]
    got = []
    while not results.empty():
        got.append(results.get())
    errors = [g for g in got if isinstance(g, Exception)]
    assert len(errors) == 1 and "step 'upper' (model 'shout')" in str(errors[0])
    ok = [g.get_response() for g in got if not isinstance(g, Exception)]  # type: ignore[attr-defined]
    assert all(r.id == "ok" for r in ok)
    assert [r.parameters["triton_final_response"].bool_param for r in ok] == [False, False, False, True]
    loud = [
        g.as_numpy("LOUD")[0]  # type: ignore[attr-defined]
        for g in got
        if not isinstance(g, Exception) and g.get_response().outputs  # type: ignore[attr-defined]
    ]
    assert loud == [b"HELLO", b"STREAMING", b"WORLD"]
