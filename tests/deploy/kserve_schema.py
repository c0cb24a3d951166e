"""Validate KServe objects against the models the KServe Python SDK (PyPI ``kserve``) generates
from KServe's OpenAPI spec -- the same Go types its CRDs are generated from.

Run with a Python that has ``kserve`` (installed with --no-deps), ``kubernetes``, ``six`` and
``urllib3`` (scripts/fetch-deploy-tools.sh makes one in .tools/kserve-venv):

    python kserve_schema.py < objects.json      # a JSON list of objects

Each object is walked along the generated models' ``openapi_types`` / ``attribute_map``: a field
the schema does not have, a value of the wrong type, or a required field missing (the model's own
constructor check) is reported with its path. Prints one line per problem and exits 1 if any,
else prints "valid N" and exits 0. Only kserve/models is loaded (the package's __init__ starts
its model server imports, which this does not need).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from typing import Any

KINDS = {"ClusterServingRuntime": "V1alpha1ClusterServingRuntime", "ServingRuntime": "V1alpha1ServingRuntime",
         "InferenceService": "V1beta1InferenceService"}


def _load_models() -> tuple[Any, Any]:
    import kubernetes.client.models as k8s

    origin = importlib.util.find_spec("kserve")
    assert origin is not None and origin.submodule_search_locations is not None
    shim = types.ModuleType("kserve")
    shim.__path__ = list(origin.submodule_search_locations)
    sys.modules["kserve"] = shim
    import kserve.models as ks  # after the shim

    return ks, k8s


KSERVE, K8S = _load_models()


def _class(name: str) -> Any:
    return getattr(KSERVE, name, None) or getattr(K8S, name)


def _check(value: Any, kind: str, path: str, problems: list[str]) -> Any:
    """The model instance for ``value`` of type ``kind``; problems appended."""
    if value is None:
        return None
    if match := re.fullmatch(r"[lL]ist\[(.*)\]", kind):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return None
        return [_check(v, match.group(1), f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if match := re.fullmatch(r"dict\(([^,]*), (.*)\)|Dict\[([^,]*), (.*)\]", kind):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map, got {type(value).__name__}")
            return None
        item = match.group(2) or match.group(4)
        return {k: _check(v, item, f"{path}.{k}", problems) for k, v in value.items()}
    primitive = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
                 "datetime": (str,), "date": (str,)}
    if kind in primitive:
        ok = isinstance(value, primitive[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
        if not ok:
            problems.append(f"{path}: expected {kind}, got {type(value).__name__} {value!r}")
        return value
    cls = _class(kind)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({kind}), got {type(value).__name__}")
        return None
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    kwargs = {}
    before = len(problems)
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: unknown field (not in {kind})")
            continue
        kwargs[fields[key]] = _check(item, cls.openapi_types[fields[key]], f"{path}.{key}", problems)
    if len(problems) > before:
        return None  # its fields already said what is wrong
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the generated model's required / enum checks
        problems.append(f"{path}: {exc}")
        return None


def main() -> int:
    objects = json.load(sys.stdin)
    problems: list[str] = []
    for obj in objects:
        kind = KINDS.get(obj.get("kind", ""))
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if kind is None:
            problems.append(f"{name}: not a KServe kind this checks ({', '.join(KINDS)})")
            continue
        _check(obj, kind, name, problems)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"valid {len(objects)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
