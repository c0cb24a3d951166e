"""The layers point one way: cli -> frontends -> engine -> dsl -> backends / repository ->
types, errors. Every import of every module is read from its source (also imports inside
functions and under ``TYPE_CHECKING``, which a run-time check would miss), and the engine and
the DSL import no transport or ML framework at all."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "dagserve"

LAYERS = {
    # rank: a module may import modules of its own rank or lower, never higher.
    "dagserve": 6,  # the package's __init__: the curated public API over every layer
    "dagserve.__main__": 6,
    "dagserve.cli": 6,
    "dagserve.cli_security": 6,
    "dagserve.cli_metrics": 6,
    "dagserve.testing": 6,
    "dagserve.validation": 6,  # `dagserve validate`: asks the backends and the dsl, like the CLI
    "dagserve.drawing": 6,  # `dagserve graph`
    "dagserve.workers": 6,  # `dagserve serve --workers N`: the supervisor and the workers' channels
    "dagserve.frontends": 5,
    "dagserve.engine": 4,
    "dagserve.dsl": 3,
    "dagserve.backends": 2,
    "dagserve.repository": 2,
    "dagserve.limits": 1,
    "dagserve.tracing": 1,
    "dagserve.custom_metrics": 1,  # the registry of models' own metrics (pb_utils.MetricFamily)
    "dagserve.types": 1,
    "dagserve.tensor_bytes": 1,
    "dagserve.classification": 1,
    "dagserve.shared_memory": 1,  # Triton's shared-memory regions, used by both frontends' codecs
    "dagserve.forwarding": 1,  # how a forwarded request's tensors cross between workers (shared buffers, CUDA IPC)
    "dagserve.balance": 1,  # which worker serves a new connection (shared counts, sockets passed by SCM_RIGHTS)
    "dagserve.cuda_ipc": 1,  # CUDA IPC memory of CUDA shared-memory regions (CuPy, imported lazily)
    "dagserve.log_settings": 1,  # the process's log settings: the CLI and the frontends read them
    "dagserve.errors": 0,
    "dagserve._version": 0,
    "dagserve._deprecation": 0,
    "dagserve._proto": 0,
}
"""Top-level modules and packages of dagserve by layer. A new one must be placed here."""

NO_TRANSPORT_OR_FRAMEWORK = (
    "starlette", "uvicorn", "httptools", "h11", "grpc", "tritonclient",
    "torch", "onnxruntime", "tensorrt", "cuml", "treelite", "tensorflow", "jax",
)
"""What ``dagserve.engine`` and ``dagserve.dsl`` never import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, typing_only: bool = True) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, wherever it is; without
    ``typing_only``, leaving out those under ``if TYPE_CHECKING:`` (annotations only)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # "from .. import errors" imports a module; "from .x import Y" a name of x.
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else target))
    return found


def layer(module: str) -> tuple[str, int] | None:
    """The entry of LAYERS that ``module`` belongs to (the longest that prefixes it)."""
    best = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank)
    return best


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_proto" not in p.parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in sources() if layer(module_name(p)) in (None, ("dagserve", 6))
                and module_name(p) != "dagserve"]
    assert unplaced == [], f"place these in LAYERS: {unplaced}"


def test_imports_point_down_only() -> None:
    """No module imports a layer above its own, not even inside a function."""
    violations = []
    for path in sources():
        own = layer(module_name(path))
        assert own is not None
        for line, target in imports(path):
            if not target.startswith("dagserve"):
                continue
            theirs = layer(target)
            if theirs is not None and theirs[1] > own[1]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own[0]} imports {target}")
    assert violations == [], "\n".join(violations)


def test_engine_and_dsl_import_no_transport_or_framework_anywhere() -> None:
    """engine/ and dsl/ name no web server, gRPC, client or ML framework in any import."""
    violations = []
    for sub in ("engine", "dsl"):
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for line, target in imports(path):
                if target.split(".")[0] in NO_TRANSPORT_OR_FRAMEWORK:
                    violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}")
    assert violations == [], "\n".join(violations)


def test_no_import_circles_between_modules() -> None:
    """No two modules import each other at run time (a function-level import back is a circle
    too, and the sign of a concept split in the wrong place; an import for annotations only,
    under ``TYPE_CHECKING``, is not)."""
    edges: dict[str, set[str]] = {}
    names = {module_name(p) for p in sources()}
    for path in sources():
        name = module_name(path)
        edges[name] = {t for _, t in imports(path, typing_only=False) if t in names and t != name}
    circles = sorted(
        f"{a} <-> {b}" for a, targets in edges.items() for b in targets
        if a < b and a in edges.get(b, set())
        and not (b.startswith(a + ".") or a.startswith(b + "."))  # a package and its own modules
    )
    assert circles == [], circles


def test_importing_the_engine_loads_no_transport_or_framework() -> None:
    """At run time too: importing the engine, the DSL and the python backend loads none of them."""
    code = (
        "import sys, dagserve.engine, dagserve.dsl, dagserve.backends.python\n"
        f"bad = [m for m in {NO_TRANSPORT_OR_FRAMEWORK!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
