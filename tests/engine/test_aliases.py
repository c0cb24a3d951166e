"""Served names (``--model-alias SERVED=MODEL``): a model answers under a second name over
HTTP and gRPC, bad aliases are refused naming the problem, and a real model of that name wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.engine import ServerOptions
from dagserve.engine.aliases import parse_aliases
from dagserve.errors import ConfigError
from dagserve.testing import serve_in_thread

REPO = Path(__file__).parents[1] / "repos" / "triton_python"


def _inputs(module: type, a: np.ndarray, b: np.ndarray) -> list:
    tensors = [module.InferInput("INPUT0", [4], "FP32"), module.InferInput("INPUT1", [4], "FP32")]
    tensors[0].set_data_from_numpy(a)
    tensors[1].set_data_from_numpy(b)
    return tensors


def test_alias_answers_infer_metadata_ready_and_statistics_over_http_and_grpc() -> None:
    """Every per-model call under the served name is answered by the model it names."""
    a, b = np.arange(4, dtype=np.float32), np.ones(4, dtype=np.float32)
    with serve_in_thread(REPO, model_aliases={"my-isvc": "add_sub"}) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        assert http.is_model_ready("my-isvc")
        assert [t["name"] for t in http.get_model_metadata("my-isvc")["inputs"]] == ["INPUT0", "INPUT1"]
        result = http.infer("my-isvc", _inputs(httpclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        assert grpc.is_model_ready("my-isvc")
        result = grpc.infer("my-isvc", _inputs(grpcclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        stats = http.get_inference_statistics("my-isvc")["model_stats"]
        assert [s["name"] for s in stats] == ["add_sub"] and stats[0]["inference_stats"]["success"]["count"] == 2
        assert http.get_model_config("my-isvc")["name"] == "add_sub"
        # The alias is not a model of its own: the repository index lists only the model.
        assert "my-isvc" not in [m["name"] for m in http.get_model_repository_index()]
        with pytest.raises(InferenceServerException, match="unknown model 'other'"):
            http.infer("other", _inputs(httpclient, a, b))


def test_a_model_of_that_name_wins_over_the_alias() -> None:
    """An alias that shadows a real model never hides it."""
    with serve_in_thread(REPO, model_aliases={"raiser": "add_sub"}) as running:
        meta = httpx.get(f"http://{running.http_url}/v2/models/raiser", timeout=30).json()
        assert meta["name"] == "raiser"


@pytest.mark.parametrize(("items", "message"), [
    (["my-isvc"], "model alias 'my-isvc': expected SERVED_NAME=MODEL"),
    (["a=a"], "model alias 'a=a' names the model itself"),
    (["a=b,b=c"], "'b' is itself an alias (of 'c'); name the model"),
    (["a=b", "a=c"], "model alias 'a' is given twice"),
    (["../x=add_sub"], "served name '../x' contains a path separator"),
])
def test_bad_aliases_are_refused_naming_the_problem(items: list[str], message: str) -> None:
    """Malformed, self-referencing, chained, repeated and unsafe aliases are ConfigErrors."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_aliases(items)
    assert parse_aliases(["a=b, c=b", ""]) == {"a": "b", "c": "b"}
    with pytest.raises(ConfigError):
        ServerOptions(model_aliases={"a": "a"})


def test_cli_flag_and_environment_variable() -> None:
    """``--model-alias`` and ``DAGSERVE_MODEL_ALIAS`` reach the server; a bad one exits 2 naming it."""
    bad = subprocess.run(check=False, args=[sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO),
                          "--model-alias", "nothing"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "model alias 'nothing': expected SERVED_NAME=MODEL" in bad.stderr
    bad = subprocess.run(check=False, args=[sys.executable, "-m", "dagserve.cli", "serve", "--model-repository", str(REPO)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "DAGSERVE_MODEL_ALIAS": "x=x"})
    assert bad.returncode == 2
    assert "names the model itself" in bad.stderr
