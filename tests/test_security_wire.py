"""No code from the wire: what a client sends is never unpickled, eval'd, imported or read as
YAML with tags; the places that could do it are checked here (docs/security.md lists them)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dagserve.backends import get_backend
from dagserve.dsl.conditions import parse_condition
from dagserve.errors import ConfigError
from dagserve.repository.loader import parse_json_config
from dagserve.testing import serve_in_thread

PACKAGE = Path(__file__).parent.parent / "dagserve"
ADD_SUB = Path(__file__).parent / "repos" / "triton_python" / "add_sub"


def test_config_override_is_json_never_yaml(tmp_path: Path) -> None:
    """A repository load's config override with a YAML python tag is refused (400 /
    INVALID_ARGUMENT) and the tag's command never runs; the loaded model keeps serving."""
    marker = tmp_path / "marker"
    repo = tmp_path / "repo"
    shutil.copytree(ADD_SUB, repo / "add_sub")
    payloads = [
        f'!!python/object/apply:os.system ["touch {marker}"]',
        f'backend: !!python/object/apply:os.system ["touch {marker}"]',
        f'{{"backend": !!python/object/apply:os.system ["touch {marker}"]}}',
    ]
    with serve_in_thread(repo, metrics=False, model_control_mode="explicit", load_models=("add_sub",)) as running:
        http = httpclient.InferenceServerClient(running.http_url)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        for payload in payloads:
            with pytest.raises(InferenceServerException) as info:
                http.load_model("add_sub", config=payload)
            assert info.value.status() == "400" and "invalid JSON" in info.value.message()
            with pytest.raises(InferenceServerException) as info:
                grpc.load_model("add_sub", config=payload)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert http.is_model_ready("add_sub")
    assert not marker.exists()


def test_deeply_nested_config_override_is_a_config_error() -> None:
    """A config override nested past Python's recursion limit is a ConfigError, not a crash."""
    text = '{"parameters": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ConfigError, match="invalid JSON"):
        parse_json_config(text, name="m")


@pytest.mark.parametrize("name", ["os", "subprocess", "dagserve.backends.python_evil", "../x"])
def test_backend_names_come_from_a_fixed_table(name: str) -> None:
    """A config naming any backend outside dagserve's table is refused before any import."""
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend(name)


def test_conditions_read_literals_only(tmp_path: Path) -> None:
    """A pipeline condition whose value is code is refused, not evaluated."""
    marker = tmp_path / "marker"
    for text in (f"params.x == __import__('os').system('touch {marker}')",
                 f"params.x == open('{marker}', 'w')"):
        with pytest.raises(ValueError, match="not a literal"):
            parse_condition(text)
    assert not marker.exists()


# Calls that turn data into code. The only allowed places: the process backend's pipe to its
# own child process (pickle of what the server itself sent), and the model loaders, which
# import files that confinement (repository/confine.py) has checked are in the repository
# (the sklearn backend unpickles its model file: the one reviewed joblib.load).
_DANGEROUS = {
    "eval": set(),
    "exec": set(),
    "__import__": set(),
    "pickle.loads": set(),
    "pickle.load": set(),
    "joblib.load": {"backends/sklearn.py"},
    "marshal.loads": set(),
    "yaml.load": set(),
    "yaml.unsafe_load": set(),
    "yaml.full_load": set(),
}


def _calls(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                found.append((func.id, node.lineno))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                found.append((f"{func.value.id}.{func.attr}", node.lineno))
    return found


def test_no_eval_unpickle_or_unsafe_yaml_in_the_package() -> None:
    """No module of dagserve calls eval/exec/__import__, pickle/marshal loads or a non-safe YAML
    loader (the process backend's own pipe is the one reviewed exception)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        for name, line in _calls(ast.parse(path.read_text(), filename=str(path))):
            if name in _DANGEROUS and rel not in _DANGEROUS[name]:
                offenders.append(f"{rel}:{line}: {name}()")
    assert offenders == [], "\n".join(offenders)


def test_json_config_override_still_loads() -> None:
    """Control: a JSON override in Triton's form is accepted."""
    config = parse_json_config(json.dumps({"backend": "python", "max_batch_size": 0}), name="m")
    assert config.name == "m" and config.backend_name == "python"
