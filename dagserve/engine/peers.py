"""The other processes of one server: what a :class:`~.server.Server` asks of them when it
runs as one worker process among several (``dagserve serve --workers N``, :mod:`dagserve.workers`).

Each worker process loads the same repository and serves its own share of the connections.
What a client expects to be one answer for the whole server is gathered from all of them:
statistics are summed here (:func:`merge_statistics`); a load or unload is done by every
process. The engine only knows the small protocol below; the transport (a Unix socket per
process) lives in :mod:`dagserve.workers`.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Peers", "merge_statistics"]


class Peers(Protocol):
    """The server's other worker processes."""

    async def call(self, op: str, **args: Any) -> list[Any]:
        """Have every other process do ``op`` (``statistics``, ``metrics``, ``load``,
        ``unload``) with ``args``; their answers, in process order. A process that is not
        running (being restarted) is left out. A process that fails the op raises the same
        :class:`~dagserve.errors.DagserveError` here."""
        ...


# Keys whose values are not added up across processes.
_LATEST = frozenset({"last_inference"})
_KEYED_LISTS = {"batch_stats": "batch_size", "model_stats": None}


def merge_statistics(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One statistics answer (Triton's ``model_stats`` JSON) from each process's: counts and
    durations summed, ``last_inference`` the latest, batch statistics summed per batch size.
    A model (version) one process lacks counts as zero there."""
    merged: dict[str, Any] = {"model_stats": []}
    for answer in answers:
        merged = _merge(merged, answer)
    return merged


def _merge(a: Any, b: Any, key: str = "") -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _merge(out[k], v, k) if k in out else v
        return out
    if isinstance(a, list) and isinstance(b, list) and key in _KEYED_LISTS:
        by_key: dict[Any, Any] = {}
        for item in (*a, *b):
            ident = _identity(item, _KEYED_LISTS[key])
            by_key[ident] = _merge(by_key[ident], item) if ident in by_key else item
        return list(by_key.values())
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a if a not in ("", [], None) else b  # names, versions, lists of records
    return max(a, b) if key in _LATEST else a + b


def _identity(item: dict[str, Any], field: str | None) -> Any:
    return item.get(field) if field is not None else (item.get("name"), item.get("version"))
