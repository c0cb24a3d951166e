"""Where in a user's file a field is, so that errors point at it: ``file:line:column``.

A config error names the user's file, the line (and column) of the field, the field's path
(``outputs[0].shape``) and, for a misspelt name, a hint (``did you mean 'shape'?``).

* :func:`yaml_index` maps each node of a YAML document (composed with :func:`yaml.compose`,
  which keeps every node's mark) to its 1-based ``(line, column)``;
* :func:`pbtxt_index` does the same for protobuf text format (``config.pbtxt``), counting the
  elements of repeated fields as pydantic numbers them;
* :func:`describe_validation` turns a pydantic :class:`~pydantic.ValidationError` into one
  message per problem with those locations and hints.

Paths are tuples of keys and indices as pydantic reports them (``("output", 0, "dims")``);
a path absent from the index is located at its nearest enclosing node.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "Index",
    "describe_validation",
    "did_you_mean",
    "field_names",
    "loc_text",
    "locate",
    "pbtxt_index",
    "yaml_index",
]

Index = Mapping[tuple[Any, ...], tuple[int, int]]
"""A field path -> its 1-based ``(line, column)``."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the candidate closest to ``name``, or ``""`` when none is
    close (difflib's ratio 0.6 or better)."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def loc_text(loc: Iterable[Any]) -> str:
    """A field path as users write it: ``output[0].dims``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def locate(loc: tuple[Any, ...], index: Index, *, column: bool = True) -> str:
    """``":line:column"`` (or ``":line"``) of ``loc`` or its nearest enclosing node; ``""`` when
    none is indexed."""
    while True:
        if loc in index:
            line, col = index[loc]
            return f":{line}:{col}" if column else f":{line}"
        if not loc:
            return ""
        loc = loc[:-1]


# -- YAML ------------------------------------------------------------------------------------------
def yaml_index(text: str) -> dict[tuple[Any, ...], tuple[int, int]]:
    """Every node of the YAML document ``text``, by path; a mapping's entry is located at its key.
    Empty when the text is not YAML (the parser reports that with its own marks)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    index: dict[tuple[Any, ...], tuple[int, int]] = {}

    def mark(node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def walk(node: yaml.Node, at: tuple[Any, ...]) -> None:
        index.setdefault(at, mark(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else None
                index[(*at, k)] = mark(key)
                walk(value, (*at, k))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*at, i))

    if root is not None:
        walk(root, ())
    return index


# -- protobuf text format --------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<word>[-+.\w]+)|(?P<punct>[:{}<>\[\],;])""",
)


def pbtxt_index(text: str, descriptor: Any) -> dict[tuple[Any, ...], tuple[int, int]]:
    """Every field set in a protobuf text-format document of the message ``descriptor`` (e.g.
    ``ModelConfig.DESCRIPTOR``), by path. Elements of repeated fields (written ``f {..} f {..}``
    or ``f [ {..}, {..} ]``, and list values ``dims: [ 1, 2 ]``) are indexed by position; a path
    into a map field is located at the map. Partial for text that does not tokenize (protobuf
    reports that itself)."""
    tokens: list[tuple[str, str, int, int]] = []  # (kind, text, line, column)
    line, start, pos = 1, 0, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        if m.lastgroup is not None:
            tokens.append((m.lastgroup, m.group(), line, m.start() - start + 1))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            start = m.start() + m.group().rindex("\n") + 1
        pos = m.end()

    index: dict[tuple[Any, ...], tuple[int, int]] = {}
    i = 0

    def peek() -> str:
        return tokens[i][1] if i < len(tokens) else ""

    def message(at: tuple[Any, ...], desc: Any, close: str | None) -> None:
        nonlocal i
        counts: dict[str, int] = {}
        while i < len(tokens):
            kind, word, ln, col = tokens[i]
            i += 1
            if word == close:
                return
            if kind != "word":
                continue
            field = desc.fields_by_name.get(word) if desc is not None else None
            sub = field.message_type if field is not None else None
            is_map = sub is not None and sub.GetOptions().map_entry
            repeated = field is not None and _is_repeated(field) and not is_map
            index.setdefault((*at, word), (ln, col))

            def element(where: tuple[int, int], word: str = word, repeated: bool = repeated) -> tuple[Any, ...]:
                if not repeated:
                    return (*at, word)
                n = counts.get(word, 0)
                counts[word] = n + 1
                index[(*at, word, n)] = where
                return (*at, word, n)

            if peek() == ":":
                i += 1
            if peek() == "[":
                i += 1
                while i < len(tokens) and peek() != "]":
                    _, w, eln, ecol = tokens[i]
                    i += 1
                    if w in ("{", "<"):
                        message(element((eln, ecol)), None if is_map else sub, "}" if w == "{" else ">")
                    elif w not in (",", ";"):
                        element((eln, ecol))
                i += 1  # the "]"
            elif peek() in ("{", "<"):
                opener = peek()
                i += 1
                message(element((ln, col)), None if is_map else sub, "}" if opener == "{" else ">")
            else:
                element((ln, col))
                if i < len(tokens) and tokens[i][0] != "punct":
                    i += 1  # the scalar value

    message((), descriptor, None)
    return index


def _is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5.29; ``label`` is deprecated there
    if flag is not None:
        return bool(flag() if callable(flag) else flag)
    return bool(field.label == field.LABEL_REPEATED)


# -- pydantic errors -------------------------------------------------------------------------------
def field_names(model: type[BaseModel], loc: Iterable[Any], *, tags: tuple[str, ...] = ()) -> set[str]:
    """The field names (and aliases) that the object at ``loc`` inside ``model`` accepts; empty
    when ``loc`` leads nowhere known. ``tags`` are discriminated-union tags in the path."""
    models: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int) or part in tags:
            continue
        nxt: list[type[BaseModel]] = []
        for m in models:
            for name, info in m.model_fields.items():
                if part in (name, info.alias, *_choices(info.validation_alias)):
                    nxt += _models_in(info.annotation)
        models = nxt
    names: set[str] = set()
    for m in models:
        for name, info in m.model_fields.items():
            names.add(name)
            names.update(a for a in (info.alias, *_choices(info.validation_alias)) if a)
    return names


def _choices(alias: Any) -> tuple[str, ...]:
    return tuple(c for c in getattr(alias, "choices", ()) if isinstance(c, str))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            found.append(a)
            continue
        stack.extend(typing.get_args(a))
    return found


def describe_validation(
    exc: ValidationError,
    *,
    path: Path | str,
    index: Index,
    model: type[BaseModel],
    prefix: tuple[Any, ...] = (),
    column: bool = True,
    tags: tuple[str, ...] = (),
    limit: int = 5,
) -> str:
    """One ``file:line:col: field 'a.b[0].c': message`` per problem (at most ``limit``, then
    ``... and N more``), joined by ``"; "``. ``prefix`` is prepended to each error's path (the
    section of the file that ``model`` validated); an unknown field gets a did-you-mean hint
    from the fields ``model`` accepts there. ``tags`` are the discriminated-union tags that
    pydantic puts in paths (left out of the message)."""
    parts = []
    errors = exc.errors()
    for e in errors[:limit]:
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), field_names(model, loc[:-1], tags=tags))
            msg = f"unknown field '{loc[-1]}'{hint}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
        shown = (*prefix, *(p for i, p in enumerate(loc) if p not in tags or i == len(loc) - 1))
        parts.append(f"{path}{locate(shown, index, column=column)}: field '{loc_text(shown)}': {msg}")
    if len(errors) > limit:
        parts.append(f"... and {len(errors) - limit} more")
    return "; ".join(parts)

