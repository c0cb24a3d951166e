"""Joining the per-item results of a mapped pipeline step (``map:`` / ``map_over``).

A mapped step calls its model once per item; :func:`gather` turns the items' answers into one
tensor per output, as the step's :class:`~dagserve.dsl.spec.GatherSpec` says: ``stack`` (same
shape from every item), ``concat`` (along the items' first dimension, with per-item counts) or
``pad`` (every item padded to the largest shape with a stated value, then stacked).

Pure (numpy only), so it is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dsl.spec import GatherSpec
from ..errors import ModelExecutionError

__all__ = ["gather"]


def gather(
    where: str,
    spec: GatherSpec,
    names: Sequence[str],
    results: Sequence[Mapping[str, np.ndarray]],
    *,
    batched: bool,
) -> dict[str, np.ndarray]:
    """Join output ``names`` of every item's ``results`` (in item order), plus the counts
    output when ``spec`` names one. ``batched``: each item answered as a batch of one (its
    member batches), whose leading dimension is dropped before joining.

    Raises:
        ModelExecutionError: an item lacks an output, or the items' shapes cannot be joined in
            this mode; the message starts with ``where`` (pipeline, step, model) and names the
            output, the item index and the shapes, with the gather mode that would fit.
    """
    joined: dict[str, np.ndarray] = {}
    for name in names:
        if name == spec.counts:
            continue
        items = _items(where, name, results, batched)
        if spec.mode == "stack":
            _same_shapes(where, name, items)
            joined[name] = np.stack(items)
        elif spec.mode == "concat":
            joined[name] = _concat(where, name, items)
        else:
            joined[name] = _pad(where, name, items, spec.value)
    if spec.counts and spec.counts in names:
        # Count the rows of what was gathered, or of every output when only the counts are read.
        counted = [n for n in names if n != spec.counts] or (sorted(results[0]) if results else [])
        joined[spec.counts] = _counts(where, spec.counts, counted, results, batched)
    return joined


def _items(where: str, name: str, results: Sequence[Mapping[str, np.ndarray]], batched: bool) -> list[np.ndarray]:
    items = []
    for index, result in enumerate(results):
        part = result.get(name)
        if part is None:
            raise ModelExecutionError(f"{where}: map item {index} did not return output '{name}'")
        items.append(part[0] if batched else part)
    return items


def _counts(
    where: str, counts_name: str, names: Sequence[str], results: Sequence[Mapping[str, np.ndarray]], batched: bool
) -> np.ndarray:
    """The rows each item gave, the same for every output in ``names``."""
    counts: list[int] = [0] * len(results)
    counted_by = ""
    for name in names:
        rows = [len(item) if item.ndim else 1 for item in _items(where, name, results, batched)]
        if not counted_by:
            counts, counted_by = rows, name
        elif rows != counts:
            index = next(i for i, (a, b) in enumerate(zip(rows, counts)) if a != b)
            raise ModelExecutionError(
                f"{where}: map item {index} returned {rows[index]} rows of output '{name}' but "
                f"{counts[index]} of '{counted_by}'; the counts output '{counts_name}' holds one count per "
                "item, so every output of the step must have as many rows per item"
            )
    return np.asarray(counts, dtype=np.int64)


def _same_shapes(where: str, name: str, items: list[np.ndarray]) -> None:
    first = items[0].shape
    for index, item in enumerate(items):
        if item.shape != first:
            raise ModelExecutionError(
                f"{where}: map item {index} returned output '{name}' with shape {list(item.shape)}, "
                f"but item 0 returned shape {list(first)}; the items' results are stacked, so every item "
                "must return the same shape (or gather them with 'concat' along their first dimension, "
                "or 'pad' with a value)"
            )


def _concat(where: str, name: str, items: list[np.ndarray]) -> np.ndarray:
    first = items[0]
    for index, item in enumerate(items):
        if item.ndim == 0 or item.shape[1:] != first.shape[1:] or item.ndim != first.ndim:
            raise ModelExecutionError(
                f"{where}: map item {index} returned output '{name}' with shape {list(item.shape)}, "
                f"but item 0 returned shape {list(first.shape)}; gather 'concat' joins items along their "
                "first dimension, so they must agree in every other dimension (or gather with 'pad')"
            )
    return np.concatenate(items)


def _pad(where: str, name: str, items: list[np.ndarray], value: Any) -> np.ndarray:
    first = items[0]
    for index, item in enumerate(items):
        if item.ndim != first.ndim:
            raise ModelExecutionError(
                f"{where}: map item {index} returned output '{name}' with shape {list(item.shape)}, "
                f"but item 0 returned shape {list(first.shape)}; gather 'pad' pads each dimension, so "
                "every item must have the same number of dimensions"
            )
    target = tuple(max(sizes) for sizes in zip(*(item.shape for item in items))) if first.ndim else ()
    if first.dtype.kind == "O" and isinstance(value, str):
        value = value.encode()
    out = np.full((len(items), *target), value, dtype=first.dtype)
    for index, item in enumerate(items):
        region: tuple[int | slice, ...] = (index, *(slice(0, size) for size in item.shape))
        out[region] = item
    return out
