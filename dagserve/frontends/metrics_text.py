"""The Prometheus text exposition format (0.0.4), written as Triton's prometheus-cpp writes it:
integers without a fraction, ``+Inf`` / ``NaN``, labels in the order given, and a family
with no sample left out."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Labels", "Writer", "escape", "escape_help", "merge", "number", "sample"]

Labels = dict[str, str]


class Writer:
    """Collects families as text lines; a family with no sample is dropped."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, doc: str, kind: str, samples: Iterable[str]) -> None:
        body = list(samples)
        if body:
            self.lines += [f"# HELP {name} {escape_help(doc)}", f"# TYPE {name} {kind}", *body]

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode() if self.lines else b""


def number(value: float) -> str:
    """A float as Prometheus writes it: ``+Inf``, ``NaN``, integers without a fraction."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if value != int(value) else str(int(value))


def sample(name: str, labels: Labels, value: float) -> str:
    if labels:
        text = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        return f"{name}{{{text}}} {number(value)}"
    return f"{name} {number(value)}"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


# Gauges that every worker process reports alike (not a share of the whole): the largest is kept.
_SAME_EVERYWHERE = ("nv_model_load_duration_secs",)


def merge(texts: Iterable[bytes]) -> bytes:
    """One exposition from those of a server's worker processes (``--workers N``): the series
    of a family are added up across processes (counters, histogram buckets, gauges such as the
    pending count), except a summary's quantiles and the gauges every process reports alike,
    which keep their largest value. Families keep the order they first appear in."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    kinds: dict[str, str] = {}
    current = ""
    for text in texts:
        for line in text.decode().splitlines():
            if line.startswith("# HELP "):
                current = line.split(" ", 3)[2]
                families.setdefault(current, ([line], {}))
            elif line.startswith("# TYPE "):
                kinds[current] = line.split(" ", 3)[3]
                if len(families[current][0]) == 1:
                    families[current][0].append(line)
            elif line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                samples = families.setdefault(current, ([], {}))[1]
                keep_max = (kinds.get(current) == "summary" and "quantile=" in series) or current in _SAME_EVERYWHERE
                old = samples.get(series)
                new = float(value)
                samples[series] = new if old is None else (max(old, new) if keep_max else old + new)
    lines = [
        line
        for head, samples in families.values()
        for line in (*head, *(f"{series} {number(value)}" for series, value in samples.items()))
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""
