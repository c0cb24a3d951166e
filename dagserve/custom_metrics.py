"""Models' own metrics: the registry behind ``pb_utils.MetricFamily`` / ``Metric``.

A server has one :class:`CustomMetrics`; models reach it through their
:class:`~dagserve.backends.base.ModelContext` and the metrics endpoint renders its
:meth:`~CustomMetrics.snapshot` beside the server's own families. The rules and the error
messages are Triton's (its C API ``TRITONSERVER_MetricFamily*`` / ``TRITONSERVER_Metric*`` as
the Python backend reports them):

* a family is a name, a description and a kind (COUNTER, GAUGE, HISTOGRAM); creating one with
  a name already registered gives the same family (the first description is kept) unless the
  kind differs, which is an error;
* a metric is a family's label set; the same labels give the same metric; a histogram's
  metric needs bucket bounds, a counter's or gauge's must have none;
* a counter only grows (``increment`` by a non-negative value), a gauge may be incremented or
  set, a histogram only observes; ``value`` reads a counter or a gauge;
* what a model created stays until the objects are released (garbage collected) or the model
  instance that created them unloads; operating on a metric of a released family is an error.

Names starting with ``nv_`` or ``dagserve_`` are the server's own and are refused.

Thread-safe: models call it from their worker threads while the endpoint reads it.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CustomMetricError", "CustomMetrics", "FamilyHandle", "MetricHandle", "MetricKind"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_PREFIXES = ("nv_", "dagserve_")


class MetricKind(enum.IntEnum):
    """Triton's ``pb_utils.MetricFamily`` kinds (``TRITONSERVER_MetricKind`` order)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class CustomMetricError(Exception):
    """A metric operation Triton refuses; the message is Triton's."""


class _Family:
    __slots__ = ("description", "handles", "kind", "metrics", "name")

    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        self.name = name
        self.description = description
        self.kind = kind
        self.handles: set[int] = set()
        self.metrics: dict[tuple[tuple[str, str], ...], _Metric] = {}


class _Metric:
    __slots__ = ("bounds", "counts", "handles", "labels", "sum", "value")

    def __init__(self, labels: tuple[tuple[str, str], ...], bounds: tuple[float, ...] | None) -> None:
        self.labels = labels
        self.value = 0.0  # counter, gauge; a histogram's count is sum(counts)
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1) if bounds is not None else []
        self.sum = 0.0
        self.handles: set[int] = set()


class FamilyHandle:
    """One creation of a family (a ``pb_utils.MetricFamily`` object holds one)."""

    __slots__ = ("family", "released")

    def __init__(self, family: _Family) -> None:
        self.family = family
        self.released = False

    @property
    def kind(self) -> MetricKind:
        return self.family.kind


class MetricHandle:
    """One creation of a metric (a ``pb_utils.Metric`` object holds one)."""

    __slots__ = ("family", "metric", "released")

    def __init__(self, family: _Family, metric: _Metric) -> None:
        self.family = family
        self.metric = metric
        self.released = False


def _kind_name(kind: MetricKind) -> str:
    return f"TRITONSERVER_METRIC_KIND_{kind.name}"


class CustomMetrics:
    """The families and metrics models created; see the module docstring for the rules."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._owned: dict[object, list[FamilyHandle | MetricHandle]] = {}

    # -- creating -------------------------------------------------------------------------------
    def family(self, name: Any, description: Any, kind: Any, *, owner: object = None) -> FamilyHandle:
        """Register (or find) the family ``name``.

        Raises:
            CustomMetricError: a bad name, description or kind; the name is the server's own,
                or registered with another kind.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise CustomMetricError(f"Invalid metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        if name.startswith(RESERVED_PREFIXES):
            raise CustomMetricError(
                f"metric family name '{name}' is reserved: names starting with "
                f"{' or '.join(RESERVED_PREFIXES)} are the server's own metrics"
            )
        if not isinstance(description, str):
            raise CustomMetricError(f"the description of metric family '{name}' must be a string")
        try:
            kind = MetricKind(kind)
        except ValueError:
            raise CustomMetricError(f"Unknown metric kind {kind!r} (use MetricFamily.COUNTER, GAUGE or HISTOGRAM)") from None
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = _Family(name, description, kind)
            elif family.kind is not kind:
                raise CustomMetricError(
                    f"metric family '{name}' already exists with kind {family.kind.name}, not {kind.name}"
                )
            handle = FamilyHandle(family)
            family.handles.add(id(handle))
            self._owned.setdefault(owner, []).append(handle)
        return handle

    def metric(
        self, family: FamilyHandle, labels: Any = None, buckets: Any = None, *, owner: object = None
    ) -> MetricHandle:
        """The metric of ``family`` with ``labels`` (a dict of strings), created if new.

        Raises:
            CustomMetricError: labels not a dict of valid names to strings; buckets given to a
                counter or gauge, missing for a histogram, or not increasing numbers; the
                family was released.
        """
        if labels is None:
            labels = {}
        if not isinstance(labels, Mapping):
            raise CustomMetricError("Failed to create metric. Labels must be a dictionary.")
        for key, value in labels.items():
            if not isinstance(key, str) or not _LABEL.fullmatch(key) or key.startswith("__"):
                raise CustomMetricError(f"Failed to create metric. Invalid label name {key!r}")
            if not isinstance(value, str):
                raise CustomMetricError(
                    f"Failed to create metric. The value of label '{key}' must be a string, not {type(value).__name__}"
                )
        kind = family.kind
        bounds: tuple[float, ...] | None = None
        if buckets is not None:
            if not isinstance(buckets, (list, tuple)):
                raise CustomMetricError("Failed to create metric. Buckets must be a list.")
            if kind is not MetricKind.HISTOGRAM:
                raise CustomMetricError("Failed to create metric. Unexpected buckets found.")
            try:
                bounds = tuple(float(b) for b in buckets)
            except (TypeError, ValueError):
                raise CustomMetricError("Failed to create metric. Buckets must be a list of numbers.") from None
            if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
                raise CustomMetricError(
                    f"Failed to create metric. Bucket boundaries must be finite and strictly increasing, got {list(bounds)}"
                )
        elif kind is MetricKind.HISTOGRAM:
            raise CustomMetricError("Failed to create metric. Missing required buckets.")
        key = tuple(sorted(labels.items()))
        with self._lock:
            if family.released:
                raise CustomMetricError(
                    "Invalid metric operation as the corresponding 'MetricFamily' has been deleted."
                )
            f = family.family
            metric = f.metrics.get(key)
            if metric is None:
                metric = f.metrics[key] = _Metric(key, bounds)
            handle = MetricHandle(f, metric)
            metric.handles.add(id(handle))
            self._owned.setdefault(owner, []).append(handle)
        return handle

    # -- operating ------------------------------------------------------------------------------
    def increment(self, handle: MetricHandle, value: float) -> None:
        with self._lock:
            self._check(handle, "increment")
            kind = handle.family.kind
            if kind is MetricKind.HISTOGRAM:
                raise CustomMetricError(f"Failed to increment metric value: {_kind_name(kind)} does not support Increment")
            if kind is MetricKind.COUNTER and value < 0:
                raise CustomMetricError(
                    "Failed to increment metric value: TRITONSERVER_METRIC_KIND_COUNTER can only be incremented "
                    "monotonically by non-negative values."
                )
            handle.metric.value += value

    def set(self, handle: MetricHandle, value: float) -> None:
        with self._lock:
            self._check(handle, "set")
            kind = handle.family.kind
            if kind is not MetricKind.GAUGE:
                raise CustomMetricError(f"Failed to set metric value: {_kind_name(kind)} does not support Set")
            handle.metric.value = value

    def observe(self, handle: MetricHandle, value: float) -> None:
        with self._lock:
            self._check(handle, "observe")
            kind = handle.family.kind
            if kind is not MetricKind.HISTOGRAM:
                raise CustomMetricError(f"Failed to observe metric value: {_kind_name(kind)} does not support Observe")
            metric = handle.metric
            assert metric.bounds is not None
            index = next((i for i, b in enumerate(metric.bounds) if value <= b), len(metric.bounds))
            metric.counts[index] += 1
            metric.sum += value

    def value(self, handle: MetricHandle) -> float:
        with self._lock:
            self._check(handle, "get")
            kind = handle.family.kind
            if kind is MetricKind.HISTOGRAM:
                raise CustomMetricError(f"Failed to get metric value: {_kind_name(kind)} does not support Value")
            return handle.metric.value

    def _check(self, handle: MetricHandle, verb: str) -> None:
        if handle.released:
            raise CustomMetricError(
                f"Failed to {verb} metric value: Invalid metric operation as the corresponding 'MetricFamily' has "
                "been deleted. The 'MetricFamily' object should be deleted AFTER its corresponding 'Metric' "
                "objects have been deleted."
            )

    # -- releasing ------------------------------------------------------------------------------
    def release(self, handle: FamilyHandle | MetricHandle) -> None:
        """Drop one creation; the last one of a metric removes it, the last one of a family
        removes the family and invalidates every metric handle of it. Idempotent."""
        with self._lock:
            self._release(handle)

    def _release(self, handle: FamilyHandle | MetricHandle) -> None:
        if handle.released:
            return
        handle.released = True
        if isinstance(handle, MetricHandle):
            metric = handle.metric
            metric.handles.discard(id(handle))
            if not metric.handles and handle.family.metrics.get(metric.labels) is metric:
                del handle.family.metrics[metric.labels]
            return
        family = handle.family
        family.handles.discard(id(handle))
        if not family.handles and self._families.get(family.name) is family:
            del self._families[family.name]
            for handles in self._owned.values():
                for h in handles:
                    if isinstance(h, MetricHandle) and h.family is family:
                        h.released = True

    def release_owner(self, owner: object) -> None:
        """Release everything created on behalf of ``owner`` (a model instance unloading)."""
        with self._lock:
            for handle in self._owned.pop(owner, ()):
                self._release(handle)

    def forget(self, handle: FamilyHandle | MetricHandle, owner: object = None) -> None:
        """:meth:`release` for a handle whose object was garbage collected."""
        with self._lock:
            self._release(handle)
            handles = self._owned.get(owner)
            if handles is not None:
                try:
                    handles.remove(handle)
                except ValueError:
                    pass

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """Every family with its metrics: ``name``, ``description``, ``kind`` and ``metrics``,
        each with ``labels`` (a dict) and ``value`` (counter, gauge) or ``buckets``
        ((bound, cumulative count) ending with +inf), ``sum`` and ``count`` (histogram)."""
        families = []
        with self._lock:
            for family in self._families.values():
                metrics = []
                for metric in family.metrics.values():
                    entry: dict[str, Any] = {"labels": dict(metric.labels)}
                    if metric.bounds is None:
                        entry["value"] = metric.value
                    else:
                        running, buckets = 0, []
                        for bound, n in zip((*metric.bounds, math.inf), metric.counts, strict=True):
                            running += n
                            buckets.append((bound, running))
                        entry.update(buckets=buckets, sum=metric.sum, count=running)
                    metrics.append(entry)
                families.append({"name": family.name, "description": family.description,
                                 "kind": family.kind, "metrics": metrics})
        return families

    def names(self) -> Sequence[str]:
        with self._lock:
            return list(self._families)
