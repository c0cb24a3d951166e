"""What the server's registry holds for each model name, and what it needs to know about the
repository to change it: which models a pipeline calls, and the fingerprint of each model
directory (see :mod:`.poll` and ``Server.load_model``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..repository.loader import ModelSource, fingerprint
from .model import ModelState, ModelVersion

if TYPE_CHECKING:
    from ..dsl.spec import PipelineSpec

__all__ = ["ModelEntry", "is_pipeline", "pipeline_members", "repository_fingerprints", "with_members"]


class ModelEntry:
    """Everything the server holds for one model name: the versions it serves and where they
    came from. ``fingerprint`` digests the repository directory they were loaded from (None:
    not from the repository — an override or a pipeline built in Python); ``load_error`` says
    why the last reload failed while these versions kept serving; ``members`` are the models a
    pipeline calls; ``functions`` the entries of the models serving its function steps (each
    with ``owner``, the pipeline's name; see :mod:`.functions`)."""

    __slots__ = (
        "error", "failed_fingerprint", "fingerprint", "functions", "load_error", "members", "name",
        "override_dir", "owner", "source", "spec", "started", "versions",
    )

    def __init__(self, name: str, source: ModelSource | None) -> None:
        self.name = name
        self.source = source
        self.versions: dict[int, ModelVersion] = {}
        self.started: list[ModelVersion] = []  # whose serve task runs (or ran) in the task group
        self.error = source.error if source else ""
        self.fingerprint: str | None = None
        self.failed_fingerprint: str | None = None
        self.load_error = ""
        self.members: frozenset[str] = frozenset()
        self.override_dir: Path | None = None
        self.spec: PipelineSpec | None = None
        self.functions: dict[str, ModelEntry] = {}
        self.owner = ""

    def reason(self) -> str:
        if self.error:
            return self.error
        # FAILED versions, and READY pipelines whose member is gone, say why.
        failed = [v.reason for v in self.versions.values() if v.reason and (v.state is ModelState.FAILED or not v.ready)]
        return "; ".join(failed)

    def serving(self) -> bool:
        return any(v.ready for v in self.versions.values())


def is_pipeline(source: ModelSource) -> bool:
    """Whether ``source`` is a pipeline (a Triton ensemble or a native pipeline)."""
    return source.config is not None and source.config.is_pipeline


async def pipeline_members(source: ModelSource) -> set[str]:
    """The models a pipeline calls: read from its config, or (Python DSL) by compiling it.
    A pipeline that does not compile calls nothing known; its load reports why."""
    assert source.config is not None
    from ..dsl.compile import compile_config, member_names

    names = member_names(source.config)
    if names is not None:
        return names
    config = source.config
    try:
        spec = await anyio.to_thread.run_sync(
            functools.partial(compile_config, config, model_dir=source.path, config_path=source.config_path)
        )
    except Exception:  # noqa: BLE001 - the pipeline's own load reports it with its reason
        return set()
    return {s.model for s in spec.steps if s.function is None}


async def with_members(names: set[str], sources: dict[str, ModelSource]) -> set[str]:
    """``names`` and every model the pipelines among them call, recursively."""
    wanted, pending = set(names), list(names)
    while pending:
        source = sources.get(pending.pop())
        if source is None or not is_pipeline(source):
            continue
        for member in await pipeline_members(source) - wanted:
            if member in sources:
                wanted.add(member)
                pending.append(member)
    return wanted


def repository_fingerprints(repository: Path) -> dict[str, str]:
    """The fingerprint of every model directory (as :func:`~dagserve.repository.loader.scan` lists them)."""
    return {
        child.name: fingerprint(child)
        for child in sorted(repository.iterdir())
        if child.is_dir() and not child.name.startswith((".", "_"))
    }
