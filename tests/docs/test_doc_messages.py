"""Every error message and log sample the docs show is what dagserve says in that situation.

A block marked ``<!-- test: message: ID -->`` (tests/docs/doccheck.py) is compared with the text
that the producer of ID below gets from dagserve by provoking the situation for real: config
files written into a repository under the test's tmp_path, loaded by the real loader and Server,
requests sent with the real tritonclient, models that really fail. The comparison is
doccheck's (error ids, durations, timestamps, pids and whitespace aside; a line ``...`` stands
for any lines). A producer's repository is ``tmp_path / "models"`` and is shown as ``models/``,
as when dagserve runs in tmp_path with ``--model-repository models``.

An ID that a page shows and no producer knows fails, and so does a producer that no page uses.
"""

from __future__ import annotations

import logging
import socket
import textwrap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from dagserve import Server
from dagserve.log_settings import LogFormatter
from dagserve.testing import serve_in_thread

from . import doccheck
from .doccheck import ROOT

Producer = Callable[[Path], str]
PRODUCERS: dict[str, Producer] = {}


def producer(message_id: str) -> Callable[[Producer], Producer]:
    """Register the function as the producer of the blocks marked ``message: message_id``."""

    def register(function: Producer) -> Producer:
        assert message_id not in PRODUCERS, f"two producers of {message_id!r}"
        PRODUCERS[message_id] = function
        return function

    return register


# -- helpers ------------------------------------------------------------------------------------

def write(repo: Path, files: dict[str, str]) -> Path:
    """Write *files* (path in the repository -> text, dedented) under *repo*; *repo*."""
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return repo


def shown(text: str, tmp: Path) -> str:
    """*text* with the paths under *tmp* relative to it (``models/...``)."""
    return text.replace(f"{tmp}/", "")


def load_failure(repo: Path, model: str) -> str:
    """Serve *repo* and return why *model* is not available, as the repository index answers
    it over HTTP (the ``reason`` that ModelNotReady answers and the log repeat)."""
    with serve_in_thread(repo, grpc=False, metrics=False) as running:
        index = httpclient.InferenceServerClient(running.http_url).get_model_repository_index()
    entry = next(e for e in index if e["name"] == model)
    assert entry["state"] == "UNAVAILABLE", entry
    return str(entry["reason"])


def refusal(repo: Path, model: str, inputs: dict[str, np.ndarray], parameters: dict[str, object] | None = None,
            *, status: str = "400", **options: Any) -> str:
    """Serve *repo* (with ServerOptions *options*), send *model* a request of *inputs* over
    HTTP, and return the error message it is refused with (which must come with HTTP *status*)."""
    with serve_in_thread(repo, grpc=False, metrics=False, **options) as running:
        client = httpclient.InferenceServerClient(running.http_url)
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model, tensors, parameters=parameters)
    assert refused.value.status() == status, refused.value
    return str(refused.value.message())


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured(logger: str) -> Iterator[list[logging.LogRecord]]:
    """The records *logger* (and its children) emit at INFO and above while the block runs."""
    handler = _Records()
    target = logging.getLogger(logger)
    level = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        target.removeHandler(handler)
        target.setLevel(level)


# -- docs/backends.md ---------------------------------------------------------------------------

@producer("framework-missing")
def _onnxruntime_missing(tmp: Path) -> str:
    """An ONNX model while onnxruntime cannot be imported (Python's own way of making a package
    missing: None in sys.modules, so the import raises ModuleNotFoundError)."""
    import onnx
    from onnx import TensorProto, helper

    repo = write(tmp / "models", {"net/config.pbtxt": 'platform: "onnxruntime_onnx"\n'})
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "net", [x], [y])
    (repo / "net" / "1").mkdir()
    onnx.save(helper.make_model(graph), str(repo / "net" / "1" / "model.onnx"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(__import__("sys").modules, "onnxruntime", None)
        return load_failure(repo, "net")


_WARMUP = """
    model_warmup [{
      name: "full_batch"
      batch_size: 8
      count: 2
      inputs { key: "INPUT__0" value: { data_type: TYPE_FP32 dims: [3, 224, 224] random_data: true } }
    }]
"""


def _warmed_model(max_batch_size: int) -> dict[str, str]:
    """Model 'm' with the docs' warmup sample: a Python model written for one image at a time."""
    return {
        "m/config.pbtxt": f"""
            backend: "python"
            max_batch_size: {max_batch_size}
            input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [3, 224, 224] }}]
            output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }}]
        """ + _WARMUP,
        "m/1/model.py": """
            def infer(inputs):
                image = inputs["INPUT__0"].reshape(1, 3, 224, 224)  # one image at a time
                return {"OUTPUT__0": image.mean(axis=(2, 3))}
        """,
    }


@producer("warmup-malformed")
def _warmup_over_max_batch_size(tmp: Path) -> str:
    """The docs' sample of batch 8 on a model of max_batch_size 4."""
    return load_failure(write(tmp / "models", _warmed_model(4)), "m")


@producer("warmup-failed")
def _warmup_request_fails(tmp: Path) -> str:
    """The docs' sample of batch 8 on a model that cannot take more than one image."""
    return load_failure(write(tmp / "models", _warmed_model(8)), "m")


@producer("remote-mismatch")
def _remote_datatype_mismatch(tmp: Path) -> str:
    """The docs' remote 'detector' (FP32 IMAGE) against a real dagserve serving it in FP16.

    That server listens on 127.0.0.1; the docs' config names the GPU pool's first endpoint,
    grpc://gpu-pool-0:8001, so its address is written as that one."""
    remote = write(tmp / "remote", {
        "detector/config.yaml": """
            backend: python
            max_batch_size: 8
            inputs:  [{name: IMAGE, datatype: FP16, shape: [3, 224, 224]}]
            outputs: [{name: BOXES, datatype: FP32, shape: [-1, 4]}]
        """,
        "detector/1/model.py": """
            import numpy as np

            def infer(inputs):
                return {"BOXES": np.zeros((len(inputs["IMAGE"]), 0, 4), np.float32)}
        """,
    })
    with serve_in_thread(remote, http=False, metrics=False) as pool:
        repo = write(tmp / "models", {"detector/config.yaml": f"""
            backend: remote
            max_batch_size: 8
            remote:
              url: grpc://{pool.grpc_url}
              model_name: detector
            inputs:  [{{name: IMAGE, datatype: FP32, shape: [3, 224, 224]}}]
            outputs: [{{name: BOXES, datatype: FP32, shape: [-1, 4]}}]
        """})
        reason = load_failure(repo, "detector")
    return shown(reason, tmp).replace(pool.grpc_url, "gpu-pool-0:8001")


@producer("remote-unreachable")
def _remote_unreachable(tmp: Path) -> str:
    """The docs' remote 'detector' whose one endpoint refuses connections (a port bound but not
    listening), asked for an inference: the 503's message. As above, that endpoint is written
    as the docs' grpc://gpu-pool-0:8001."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        repo = write(tmp / "models", {"detector/config.yaml": f"""
            backend: remote
            max_batch_size: 8
            remote:
              url: grpc://{address}
            inputs:  [{{name: IMAGE, datatype: FP32, shape: [3, 224, 224]}}]
            outputs: [{{name: BOXES, datatype: FP32, shape: [-1, 4]}}]
        """})
        said = refusal(repo, "detector", {"IMAGE": np.zeros((1, 3, 224, 224), np.float32)}, status="503")
    return said.replace(address, "gpu-pool-0:8001")


# -- docs/pipelines.md --------------------------------------------------------------------------

_DOUBLE = """
    def infer(inputs):
        return {"Y": inputs["X"] * 2}
"""


@producer("condition-type")
def _condition_compares_a_string_with_a_boolean(tmp: Path) -> str:
    """`params.explain == true` and a request whose parameter is the JSON string "true"."""
    repo = write(tmp / "models", {
        "explainer/config.yaml": """
            backend: python
            inputs: [{name: X, datatype: FP32, shape: [-1]}]
            outputs: [{name: Y, datatype: FP32, shape: [-1]}]
        """,
        "explainer/1/model.py": _DOUBLE,
        "report/config.yaml": """
            backend: pipeline
            inputs: [{name: X, datatype: FP32, shape: [-1]}]
            outputs: [{name: Y, datatype: FP32, shape: [-1]}]
            pipeline:
              steps:
                - {name: explain, model: explainer, inputs: {X: X}, when: "params.explain == true"}
              outputs: {Y: [explain.Y, X]}
        """,
    })
    return refusal(repo, "report", {"X": np.ones(2, np.float32)}, {"explain": "true"})


@producer("one-of")
def _one_of_given_both(tmp: Path) -> str:
    """The docs' classify_image pipeline (one_of IMAGE, IMAGE_URL) sent both."""
    repo = write(tmp / "models", {
        "decode_image/config.yaml": """
            backend: python
            inputs: [{name: DATA, datatype: UINT8, shape: [-1]}]
            outputs: [{name: PIXELS, datatype: FP32, shape: [-1]}]
        """,
        "decode_image/1/model.py": """
            def infer(inputs):
                return {"PIXELS": inputs["DATA"].astype("float32") / 255}
        """,
        "fetch_image/config.yaml": """
            backend: python
            inputs: [{name: URL, datatype: BYTES, shape: [1]}]
            outputs: [{name: PIXELS, datatype: FP32, shape: [-1]}]
        """,
        "fetch_image/1/model.py": """
            import numpy as np

            def infer(inputs):
                return {"PIXELS": np.zeros(4, np.float32)}
        """,
        "classifier/config.yaml": """
            backend: python
            inputs: [{name: PIXELS, datatype: FP32, shape: [-1]}]
            outputs: [{name: SCORE, datatype: FP32, shape: [1]}]
        """,
        "classifier/1/model.py": """
            def infer(inputs):
                return {"SCORE": inputs["PIXELS"][:1]}
        """,
        "classify_image/config.yaml": """
            backend: pipeline
            inputs:
              - {name: IMAGE, datatype: UINT8, shape: [-1], optional: true}
              - {name: IMAGE_URL, datatype: BYTES, shape: [1], optional: true}
            outputs: [{name: SCORE, datatype: FP32, shape: [1]}]
            pipeline:
              one_of: [[IMAGE, IMAGE_URL]]
              steps:
                - {name: decode, model: decode_image, inputs: {DATA: IMAGE}}
                - {name: fetch, model: fetch_image, inputs: {URL: IMAGE_URL}}
                - {name: classify, model: classifier, inputs: {PIXELS: [decode.PIXELS, fetch.PIXELS]}}
              outputs: {SCORE: classify.SCORE}
        """,
    })
    image, url = np.arange(4, dtype=np.uint8), np.array([b"http://example.com/cat.png"], dtype=object)
    return refusal(repo, "classify_image", {"IMAGE": image, "IMAGE_URL": url})


@producer("map-ragged")
def _map_items_of_different_shapes(tmp: Path) -> str:
    """ragged_map (tests/repos/bad_requests) maps ragged, which answers N zeros, over N = 2, 2, 5."""
    del tmp
    return refusal(ROOT / "tests" / "repos" / "bad_requests", "ragged_map", {"NS": np.array([[2], [2], [5]], np.int32)},
                   status="500", model_control_mode="explicit", load_models=("ragged_map",))


# -- docs/operations.md -------------------------------------------------------------------------

@producer("log-formats")
def _model_ready_in_each_log_format(tmp: Path) -> str:
    """The line 'iris' (examples/pipelines) logs when it becomes READY, written by the formatter
    each --log-format installs, one per line after the format's name."""
    del tmp

    async def load() -> None:
        async with Server(model_repository=ROOT / "examples" / "pipelines", model_control_mode="explicit",
                          load_models=("iris",)):
            pass

    with captured("dagserve") as records:
        anyio.run(load)
    [ready] = [r for r in records if r.getMessage().startswith("model 'iris' version 1: LOADING -> READY")]
    return "\n".join(f"{name:<9} {LogFormatter(name).format(ready)}" for name in ("default", "ISO8601", "json"))


# -- the tests ----------------------------------------------------------------------------------

def unpaired(shown: dict[str, list[doccheck.Block]], produced: Iterable[str]) -> list[str]:
    """A line per block whose ID has no producer, and per produced ID that no block shows."""
    produced = set(produced)
    return ([f"{b.where}: 'message: {i}' has no producer in tests/docs/{Path(__file__).name}"
             for i in sorted(set(shown) - produced) for b in shown[i]]
            + [f"the message {i!r} is produced in tests/docs/{Path(__file__).name} but shown by no page"
               for i in sorted(produced - set(shown))])


def differences(blocks: list[doccheck.Block], said: str) -> list[str]:
    """A line per block that does not show *said* (normalised as doccheck compares outputs)."""
    return [f"{b.where}: the message shown differs from what dagserve says.\nshown:\n{b.text}said:\n{said}\n"
            for b in blocks if not doccheck.matches(b.text, said)]


def test_every_shown_message_has_a_producer_and_every_producer_is_shown() -> None:
    """The IDs the pages mark and the IDs produced here are the same: a sample nobody
    compares, or a producer left behind by a page's edit, fails naming it."""
    problems = unpaired(doccheck.message_blocks(), PRODUCERS)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("message_id", sorted(PRODUCERS))
def test_the_docs_show_what_dagserve_says(message_id: str, tmp_path: Path) -> None:
    """Each block showing the message is, normalised, what its producer got from dagserve."""
    blocks = doccheck.message_blocks().get(message_id, [])
    assert blocks, f"no page shows the message {message_id!r}"
    problems = differences(blocks, PRODUCERS[message_id](tmp_path))
    assert not problems, "\n".join(problems)


# -- the checker itself, on a page made for the purpose -----------------------------------------

PAGE = """\
<!-- test: message: greeting -->
```text
model 'm' version 1: LOADING -> READY: loaded in 0.04 s (error id 1a2b3c)
...
```

<!-- test: message: farewell -->
```text
bye
```
"""


def test_an_unknown_id_an_unshown_producer_and_a_wrong_sample_are_named(tmp_path: Path) -> None:
    """A block whose ID nobody produces and a producer no block shows are each named; a sample
    matches what is said up to durations, error ids and ``...``, and one that differs is named
    with both texts."""
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    shown = doccheck.message_blocks([page])
    assert sorted(shown) == ["farewell", "greeting"]
    assert unpaired(shown, ["greeting", "welcome"]) == [
        f"{page}:8: 'message: farewell' has no producer in tests/docs/test_doc_messages.py",
        "the message 'welcome' is produced in tests/docs/test_doc_messages.py but shown by no page",
    ]
    said = "model 'm' version 1: LOADING -> READY: loaded in 1.5 s (error id ffee00)\nthen more lines\n"
    assert differences(shown["greeting"], said) == []
    [problem] = differences(shown["greeting"], said.replace("version 1", "version 2"))
    assert problem.startswith(f"{page}:2: the message shown differs from what dagserve says.")
    assert "said:\nmodel 'm' version 2" in problem
