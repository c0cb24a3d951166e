"""A griffe extension for the docs site (mkdocs.yml): dagserve's docstrings are written in the
reST that ``help()`` and Sphinx read (``:func:`x```, ``text::`` + an indented block); this turns
those two forms into Markdown before mkdocstrings renders them, so the API pages show code, not
roles. The docstrings themselves are left as they are."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|meth|class|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def markdown(text: str) -> str:
    """*text* with reST roles as code spans and ``::`` literal blocks as fenced code."""
    # `~a.b.c` shows as `c`, as in Sphinx
    text = ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            stripped = line.rstrip()[:-2].rstrip()
            if stripped:
                out.append(stripped + ":")
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            indent = len(line) - len(line.lstrip())
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                pad = " " * indent
                out += ["", pad + "```python", *(pad + b[cut:] for b in block), pad + "```", ""]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class ReSTToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
