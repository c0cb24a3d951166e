"""Pictures of a pipeline: its DAG as Mermaid or Graphviz text (``dagserve graph``).

:func:`pipeline_graph` turns a :class:`~dagserve.dsl.spec.PipelineSpec` into a neutral
:class:`PipelineGraph` of nodes and edges; :func:`to_mermaid` and :func:`to_dot` write it out;
:func:`render` runs Graphviz's ``dot`` program to make SVG or PNG (no Python dependency).

* **Nodes**: each pipeline input, each step (its name, its model and version, and marks for
  ``when``, ``map``, ``loop``), a diamond per switch (steps whose conditions test one subject
  for equality: the YAML ``switch`` / DSL ``p.switch`` cases and default), each output.
* **Edges**: one per pair of nodes, with a line per tensor it carries: the tensor's name
  (``OUT as IN`` when the reader's input is called otherwise) and, when types are given, its
  datatype and full shape (``-1`` first for a batch dimension). Dashed edges are reads that may
  find nothing: alternatives after a switch (``[a.Y, b.Y]``), a condition's subject, and the
  values a loop carries back into its own step.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .dsl.conditions import Condition, Op
from .dsl.spec import FirstOf, PipelineSpec, StepSpec, TensorRef
from .dsl.typecheck import TensorType
from .errors import InternalError, UnsupportedError

__all__ = ["Edge", "Node", "NodeKind", "PipelineGraph", "pipeline_graph", "render", "to_dot", "to_mermaid"]

FORMATS = ("mermaid", "dot", "svg", "png")
"""The formats ``dagserve graph`` writes: two texts, two Graphviz renderings."""


class NodeKind(enum.Enum):
    INPUT = "input"
    STEP = "step"
    SWITCH = "switch"
    OUTPUT = "output"


@dataclass(frozen=True, kw_only=True, slots=True)
class Node:
    """A box of the picture; ``lines[0]`` is its title. ``id`` is safe in every format."""

    id: str
    kind: NodeKind
    lines: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Edge:
    """An arrow from ``source`` to ``target`` (node ids); ``dashed`` when the read may find
    nothing (see the module doc)."""

    source: str
    target: str
    lines: tuple[str, ...] = ()
    dashed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineGraph:
    """A pipeline's picture before it is written in a format."""

    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]


def pipeline_graph(spec: PipelineSpec, types: Mapping[TensorRef, TensorType] | None = None) -> PipelineGraph:
    """The nodes and edges of ``spec``; with ``types`` (``CheckedPipeline.types``) edges carry
    datatypes and shapes. Never raises: a reference to nothing is drawn from a node of its own
    (so unchecked, even broken, specs can be drawn)."""
    return _Builder(spec, types or {}).build()


class _Builder:
    def __init__(self, spec: PipelineSpec, types: Mapping[TensorRef, TensorType]) -> None:
        self.spec = spec
        self.types = types
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.inputs: dict[str, str] = {}
        self.steps: dict[str, str] = {}
        self.switches = _switches(spec.steps)
        self.switch_ids: dict[object, str] = {}

    def build(self) -> PipelineGraph:
        batch = (-1,) if self.spec.max_batch_size > 0 else ()
        for i, t in enumerate(self.spec.inputs):
            self.inputs[t.name] = node = f"in_{i}"
            typed = (t.name, f"{t.datatype.value} {_shape((*batch, *t.shape))}")
            self.nodes.append(
                Node(id=node, kind=NodeKind.INPUT, lines=typed + (("optional",) if t.optional else ()))
            )
        for i, step in enumerate(self.spec.steps):
            self.steps[step.name] = f"step_{i}"
        for step in self.spec.steps:
            self.step(step)
        for i, output in enumerate(self.spec.outputs):
            node = f"out_{i}"
            lines = [output.name]
            if output.datatype is not None and output.shape is not None:
                lines.append(f"{output.datatype.value} {_shape((*batch, *output.shape))}")
            if output.optional:
                lines.append("optional")
            self.nodes.append(Node(id=node, kind=NodeKind.OUTPUT, lines=tuple(lines)))
            for ref in _refs(output.source):
                label = (self.tensor(ref),)
                self.edges.append(
                    Edge(
                        source=self.producer(ref),
                        target=node,
                        lines=label,
                        dashed=isinstance(output.source, FirstOf),
                    )
                )
        return PipelineGraph(name=self.spec.name, nodes=tuple(self.nodes), edges=_merged(self.edges))

    def step(self, step: StepSpec) -> None:
        node = self.steps[step.name]
        version = "latest" if step.model_version < 0 else f"v{step.model_version}"
        called = f"function {step.function.name}" if step.function is not None else f"model {step.model} ({version})"
        lines = [step.name, called]
        switch = self.switches.get(step.name)
        if switch is not None:
            self.edges.append(Edge(source=self.switch_node(switch), target=node, lines=(switch.case(step),)))
        elif step.when is not None:
            lines.append(f"when {step.when}")
            if isinstance(step.when.subject, TensorRef):
                self.edges.append(
                    Edge(
                        source=self.producer(step.when.subject),
                        target=node,
                        lines=(f"{step.when.subject.name} (when)",),
                        dashed=True,
                    )
                )
        if step.map_over:
            gathered = "" if step.gather.mode == "stack" else f", gather {step.gather}"
            lines.append(f"map over {', '.join(step.map_over)}{gathered}")
        if step.loop is not None:
            until = f", until {step.loop.until}" if step.loop.until is not None else ""
            lines.append(f"loop ≤ {step.loop.max_iterations}{until}")
            for fed, produced in step.loop.carry.items():
                carried = TensorRef(step=step.name, name=produced)
                self.edges.append(
                    Edge(
                        source=node,
                        target=node,
                        lines=(self.tensor(carried, fed),),
                        dashed=True,
                    )
                )
        self.nodes.append(Node(id=node, kind=NodeKind.STEP, lines=tuple(lines)))
        for name, source in step.inputs.items():
            for ref in _refs(source):
                if ref.step == step.name and step.loop is not None:
                    continue  # a loop's own output: drawn as its carry edge
                label = (self.tensor(ref, name),)
                self.edges.append(
                    Edge(
                        source=self.producer(ref),
                        target=node,
                        lines=label,
                        dashed=isinstance(source, FirstOf),
                    )
                )

    def switch_node(self, switch: _Switch) -> str:
        found = self.switch_ids.get(switch.subject)
        if found is not None:
            return found
        node = self.switch_ids[switch.subject] = f"switch_{len(self.switch_ids)}"
        self.nodes.append(Node(id=node, kind=NodeKind.SWITCH, lines=(f"switch {switch.subject}",)))
        if isinstance(switch.subject, TensorRef):
            ref = switch.subject
            self.edges.append(Edge(source=self.producer(ref), target=node, lines=(self.tensor(ref),)))
        return node

    def producer(self, ref: TensorRef) -> str:
        """The node that makes ``ref``; a node of its own for a reference to nothing."""
        found = self.inputs.get(ref.name) if ref.step is None else self.steps.get(ref.step)
        if found is not None:
            return found
        node = f"missing_{sum(n.id.startswith('missing_') for n in self.nodes)}"
        self.nodes.append(Node(id=node, kind=NodeKind.INPUT, lines=(str(ref), "(not found)")))
        if ref.step is None:
            self.inputs[ref.name] = node
        else:
            self.steps[ref.step] = node
        return node

    def tensor(self, ref: TensorRef, reader: str | None = None) -> str:
        """An edge's line for one tensor: ``NAME: FP32 [-1, 4]`` (``NAME as INPUT`` when the
        reader calls it otherwise; no type when none is known)."""
        name = ref.name if reader is None or reader == ref.name else f"{ref.name} as {reader}"
        found = self.types.get(ref)
        return f"{name}: {found.datatype.value} {_shape(found.full)}" if found is not None else name


def _merged(edges: Iterable[Edge]) -> tuple[Edge, ...]:
    """One edge per (source, target, dashed), its lines those of every tensor it carries: a
    step reading three outputs of another gets one arrow with three lines, not three arrows."""
    merged: dict[tuple[str, str, bool], list[str]] = {}
    for e in edges:
        merged.setdefault((e.source, e.target, e.dashed), []).extend(e.lines)
    return tuple(
        Edge(source=src, target=dst, lines=tuple(lines), dashed=dashed)
        for (src, dst, dashed), lines in merged.items()
    )


@dataclass(frozen=True, slots=True)
class _Switch:
    """The steps conditioned on one subject compared for equality: a switch's cases."""

    subject: object
    cases: frozenset[object]

    def case(self, step: StepSpec) -> str:
        when = step.when
        assert when is not None
        if when.op is Op.NOT_IN and isinstance(when.value, tuple) and set(when.value) <= self.cases:
            return "default"
        return f"{when.op.value} {when.value!r}" if when.op is not Op.TRUTHY else "true"


def _switches(steps: Iterable[StepSpec]) -> dict[str, _Switch]:
    """Which steps are cases of a switch: two or more different ``==`` / ``not in``
    conditions on one subject (a single condition is drawn as a plain ``when``)."""
    groups: dict[object, list[tuple[str, Condition]]] = {}
    for step in steps:
        if step.when is not None and step.when.op in (Op.EQ, Op.NOT_IN):
            groups.setdefault(step.when.subject, []).append((step.name, step.when))
    found = {}
    for subject, members in groups.items():
        if len({when for _, when in members}) < 2:
            continue
        switch = _Switch(subject, frozenset(w.value for _, w in members if w.op is Op.EQ))
        found.update({name: switch for name, _ in members})
    return found


def _refs(source: TensorRef | FirstOf) -> tuple[TensorRef, ...]:
    return source.refs if isinstance(source, FirstOf) else (source,)


def _shape(dims: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


# -- Mermaid ------------------------------------------------------------------------------------
_MERMAID_SHAPES = {
    NodeKind.INPUT: ('(["', '"])'),
    NodeKind.STEP: ('["', '"]'),
    NodeKind.SWITCH: ('{"', '"}'),
    NodeKind.OUTPUT: ('(["', '"])'),
}
_MERMAID_STYLES = {
    NodeKind.INPUT: "fill:#e3f2fd,stroke:#1e88e5",
    NodeKind.STEP: "fill:#fff8e1,stroke:#f9a825",
    NodeKind.SWITCH: "fill:#f3e5f5,stroke:#8e24aa",
    NodeKind.OUTPUT: "fill:#e8f5e9,stroke:#43a047",
}


def to_mermaid(graph: PipelineGraph) -> str:
    """A Mermaid ``flowchart`` (paste into Markdown on GitHub, or mermaid.live)."""
    out = ["flowchart LR", f"  %% pipeline {graph.name}"]
    for node in graph.nodes:
        opening, closing = _MERMAID_SHAPES[node.kind]
        out.append(f"  {node.id}{opening}{_mermaid_text(node.lines)}{closing}")
    for edge in graph.edges:
        arrow = "-.->" if edge.dashed else "-->"
        label = f'|"{_mermaid_text(edge.lines)}"|' if edge.lines else ""
        out.append(f"  {edge.source} {arrow}{label} {edge.target}")
    for kind, style in _MERMAID_STYLES.items():
        ids = [n.id for n in graph.nodes if n.kind is kind]
        if ids:
            # Suffixed class names: a bare "end" or "class" would be read as Mermaid syntax.
            out.append(f"  classDef {kind.value}Node {style}")
            out.append(f"  class {','.join(ids)} {kind.value}Node")
    return "\n".join(out) + "\n"


def _mermaid_text(lines: Iterable[str]) -> str:
    # Labels are HTML inside double quotes: entity codes keep quotes and angle brackets literal.
    escaped = (
        line.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for line in lines
    )
    return "<br/>".join(escaped)


# -- Graphviz -----------------------------------------------------------------------------------
_DOT_STYLES = {
    NodeKind.INPUT: 'shape=ellipse, style=filled, fillcolor="#e3f2fd", color="#1e88e5"',
    NodeKind.STEP: 'shape=box, style="rounded,filled", fillcolor="#fff8e1", color="#f9a825"',
    NodeKind.SWITCH: 'shape=diamond, style=filled, fillcolor="#f3e5f5", color="#8e24aa"',
    NodeKind.OUTPUT: 'shape=ellipse, style=filled, fillcolor="#e8f5e9", color="#43a047"',
}


def to_dot(graph: PipelineGraph) -> str:
    """A Graphviz ``digraph``; :func:`render` (or ``dot -Tpng``) draws it."""
    out = [
        f"digraph {_dot_string([graph.name])} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    for node in graph.nodes:
        out.append(f"  {node.id} [label={_dot_string(node.lines)}, {_DOT_STYLES[node.kind]}];")
    for edge in graph.edges:
        attrs = [f"label={_dot_string(edge.lines)}"] if edge.lines else []
        if edge.dashed:
            attrs.append("style=dashed")
        out.append(f"  {edge.source} -> {edge.target}{' [' + ', '.join(attrs) + ']' if attrs else ''};")
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_string(lines: Iterable[str]) -> str:
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def render(dot_text: str, fmt: str) -> bytes:
    """Draw Graphviz text as ``svg`` or ``png`` with the ``dot`` program.

    Raises:
        UnsupportedError: ``dot`` is not installed (the message says how to get it), or
            ``fmt`` is neither svg nor png.
        InternalError: ``dot`` failed; its message is included.
    """
    if fmt not in ("svg", "png"):
        raise UnsupportedError(f"cannot render format {fmt!r} (svg or png)")
    program = shutil.which("dot")
    if program is None:
        raise UnsupportedError(
            f"--format {fmt} needs Graphviz's `dot` program, which is not installed: install graphviz "
            "(apt-get install graphviz, brew install graphviz) or use --format dot or --format mermaid"
        )
    done = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise InternalError(
            f"Graphviz dot failed (exit {done.returncode}): {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout
