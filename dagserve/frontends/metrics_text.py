"""The Prometheus text exposition format (0.0.4), written as Triton's prometheus-cpp writes it:
integers without a fraction, ``+Inf`` / ``NaN``, labels in the order given, and a family
with no sample left out."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Labels", "Writer", "escape", "escape_help", "number", "sample"]

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
