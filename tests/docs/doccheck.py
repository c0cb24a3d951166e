"""Runs the commands the docs show and compares the outputs they show with what is printed.

A fenced block in README.md or docs/*.md is classified by an HTML comment on the line before it
(invisible on GitHub and on the docs site):

``<!-- test: run -->`` (or ``<!-- test: run: exits N -->``)
    a ``bash`` block runs with ``bash -e``, a ``python`` block as a script (top-level ``await``
    allowed, as in ``python -m asyncio``), from the checkout's root, with the test's Python
    environment first on ``PATH`` (so ``dagserve`` and ``python`` are this checkout's); it must
    exit 0 (or N).
``<!-- test: output -->``
    what the ``run`` block before it prints (stdout and stderr together), or what the ``serve``
    block before it printed until it was ready (its log lines aside); a line ``...`` stands for
    any number of lines the page leaves out.
``<!-- test: serve -->``
    a ``bash`` block of one ``dagserve serve ...`` command: started as the page's server for the
    ``run`` blocks after it (until the next ``serve`` block).
``<!-- test: excerpt: PATH -->``
    a part of the checkout's file PATH (a config, a model's code): each line of the block that
    is more than a comment or ``...`` is a line of the file, in the file's order (comments at
    the ends of lines are not compared: the docs annotate).
``<!-- test: synopsis: COMMAND -->``
    a usage summary of COMMAND (``dagserve serve``): every ``--flag`` it names is one that
    ``COMMAND --help`` lists (from a line starting ``dagserve SUBCOMMAND`` on, that one's).
``<!-- test: message: ID -->``
    an error message or a log sample dagserve writes: tests/docs/test_doc_messages.py has one
    producer per ID, which provokes the situation for real and compares what dagserve says with
    the block (normalised as outputs are, below). Several blocks may show one ID; an ID no
    producer knows fails, and so does a producer whose ID no page shows.
``<!-- test: figure: WHAT -->``
    not the output of a program: a diagram, a file tree, a config fragment, a formula (WHAT
    says which); nothing to check.
``<!-- test: skip: REASON -->``
    not run, and why (needs a GPU, Docker, a deployment's paths...); for an output, why it
    cannot be produced here (a record of a run on the GPU machine).

A ``run`` block that talks to a server (names ``localhost:8000``...) before any ``serve`` block
gets the server the docs start with: ``dagserve serve --model-repository examples/pipelines``
(what ``scripts/demo.sh`` serves). One server per page, on ports the system picks.

Every fenced block whose language is a shell or Python, or ``text``, or that names no language,
must carry one of these markers: a command nobody runs, or a message nobody compares with
dagserve's, can drift unseen. (``yaml``, ``json`` and the like need none: they are configs and
requests, checked where a marker says so.)

What is substituted, and how the comparison is normalised — nothing else varies:

* the documented ports ``localhost:8000`` / ``8001`` / ``8002`` (HTTP, gRPC, metrics) become the
  server's real ones (on 127.0.0.1) in the commands, and the real port numbers are written back
  as the documented ones in the output; ``/tmp/`` in a command becomes a directory of the
  test's own (and back);
* error ids, durations (``0.04 s``, ``12 ms``), timestamps and process ids compare equal to any
  value, and so does the source line a log line names (``model.py:143]``, ``"line": 143``):
  it moves with every edit of that file;
* whitespace is not compared: the docs wrap long lines and align columns.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]

COMMAND_LANGUAGES = {"", "bash", "sh", "shell", "console", "python", "py", "pycon"}
KINDS = {"run", "output", "serve", "skip", "excerpt", "synopsis", "message", "figure"}
DEFAULT_SERVER = "dagserve serve --model-repository examples/pipelines"
DOC_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
COMMAND_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 120

_MARKER = re.compile(r"^\s*<!--\s*test:\s*(\w+)\s*(?::\s*(.*?))?\s*-->\s*$")
_FENCE_OPEN = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")

# Python blocks run through this: top-level await runs in an event loop, as python -m asyncio does.
_PY_RUNNER = (
    "import ast, asyncio, sys\n"
    "path = sys.argv[1]\n"
    "code = compile(open(path).read(), path, 'exec', flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)\n"
    "result = eval(code, {'__name__': '__main__'})\n"
    "if asyncio.iscoroutine(result):\n"
    "    asyncio.run(result)\n"
)


@dataclass(frozen=True, kw_only=True)
class Block:
    """One fenced block of a page and the marker before it (``kind`` "" when it has none)."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    kind: str = ""
    reason: str = ""

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of *page*, in order, each with the marker on the line before it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        marker = _MARKER.match(lines[i - 1]) if i else None
        kind, reason = (marker.group(1), marker.group(2) or "") if marker else ("", "")
        found.append(Block(page=page, line=i + 1, language=language.lower(), text="\n".join(body) + "\n",
                           kind=kind, reason=reason))
        i = end + 1
    return found


_NEEDS_REASON = {"skip": "a reason: <!-- test: skip: why -->",
                 "excerpt": "a path: <!-- test: excerpt: path/in/checkout -->",
                 "synopsis": "a command: <!-- test: synopsis: dagserve serve -->",
                 "message": "an id: <!-- test: message: remote-mismatch --> (tests/docs/test_doc_messages.py)",
                 "figure": "what it shows: <!-- test: figure: a file tree -->"}


def unclassified(page: Path) -> list[str]:
    """A line per block of *page* that is a command (or names no language) yet has no marker,
    or whose marker is malformed."""
    problems = []
    for block in blocks(page):
        if block.kind and block.kind not in KINDS:
            problems.append(f"{block.where}: unknown marker 'test: {block.kind}' (one of {sorted(KINDS)})")
        elif block.kind in _NEEDS_REASON and not block.reason.strip():
            problems.append(f"{block.where}: 'test: {block.kind}' needs {_NEEDS_REASON[block.kind]}")
        elif not block.kind and block.language in COMMAND_LANGUAGES:
            shown = block.language or "no language"
            problems.append(f"{block.where}: a {shown} block with no <!-- test: run|output|serve|skip: why --> "
                            "marker before it" + ("; give it a language (text for an output)"
                                                  if not block.language else ""))
        elif not block.kind and block.language == "text":
            problems.append(f"{block.where}: a text block with no marker before it: <!-- test: output --> "
                            "(what the block before prints), <!-- test: message: ID --> (an error or log "
                            "sample), <!-- test: figure: what it is --> or <!-- test: skip: why -->")
        elif block.kind in {"run", "serve"} and block.language not in {"bash", "sh", "shell", "python", "py"}:
            problems.append(f"{block.where}: 'test: {block.kind}' on a {block.language or 'no-language'} block "
                            "(bash or python)")
    return problems


def message_blocks(pages: list[Path] = PAGES) -> dict[str, list[Block]]:
    """The ``message`` blocks of *pages* by their ID, each ID's in page order."""
    found: dict[str, list[Block]] = {}
    for page in pages:
        for block in blocks(page):
            if block.kind == "message" and block.reason.strip():
                found.setdefault(block.reason.strip(), []).append(block)
    return found


# -- excerpts ----------------------------------------------------------------------------------

def _code(line: str) -> str:
    """*line* without its trailing comment and with its whitespace collapsed."""
    line = re.sub(r"\s+#(\s.*)?$", "", line) if not line.lstrip().startswith("#") else ""
    return " ".join(line.split())


def excerpt_problem(block: Block) -> str | None:
    """Why *block* is not an excerpt of the file its marker names, or None when it is."""
    path = ROOT / block.reason.strip()
    if not path.is_file():
        return f"{block.where}: excerpt of {block.reason.strip()!r}, which is not a file of the checkout"
    source = [c for c in map(_code, path.read_text().splitlines()) if c]
    at = 0
    for line in block.text.splitlines():
        wanted = _code(line)
        if not wanted or wanted in {"...", "# ..."}:
            continue
        try:
            at = source.index(wanted, at) + 1
        except ValueError:
            return (f"{block.where}: the line {line.strip()!r} is not in {block.reason.strip()} "
                    "(after the lines before it)")
    return None


def synopsis_problem(block: Block, env: dict[str, str]) -> str | None:
    """The flags *block* names that its command's ``--help`` does not list, or None."""
    command, unknown = block.reason.strip(), []
    known: dict[str, set[str]] = {}
    for line in block.text.splitlines():
        if (m := re.match(r"\s*(dagserve [a-z]+)\b", line)):
            command = m.group(1)
        if command not in known:
            help_text = subprocess.run([*shlex.split(command), "--help"], cwd=ROOT, env=env, capture_output=True,
                                       text=True, timeout=COMMAND_TIMEOUT_S, check=True).stdout
            known[command] = set(re.findall(r"--[\w-]+", help_text))
        unknown += [f"{flag} ({command})" for flag in re.findall(r"--[\w-]+", line) if flag not in known[command]]
    return f"{block.where}: not options: {', '.join(unknown)}" if unknown else None


# -- normalising --------------------------------------------------------------------------------

_VARYING = [
    (re.compile(r"error id [0-9a-zA-Z-]+"), "error id <id>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?"), "<timestamp>"),
    (re.compile(r"\b[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+\b"), "<glog prefix>"),
    (re.compile(r"\b\d+(\.\d+)? ?(s|ms|µs|us)\b"), "<duration>"),
    (re.compile(r"\bpid \d+\b"), "pid <pid>"),
    (re.compile(r"(<timestamp> [IWEV]) \d+ "), r"\1 <pid> "),  # --log-format ISO8601
    (re.compile(r'"pid": \d+'), '"pid": <pid>'),  # --log-format json
    (re.compile(r"\b([\w.]+\.py):\d+\]"), r"\1:<line>]"),
    (re.compile(r'"line": \d+'), '"line": <line>'),
    (re.compile(r"\(pids [\d, ]+\)"), "(pids <pids>)"),
]


def matches(shown: str, printed: str) -> bool:
    """Whether *printed* is the output *shown*, normalised, where each line ``...`` of *shown*
    stands for any lines."""
    parts = re.split(r"^\s*\.\.\.\s*$", shown, flags=re.MULTILINE)
    pattern = ".*?".join(re.escape(normalise(part)) for part in parts)
    return re.fullmatch(pattern, normalise(printed), flags=re.DOTALL) is not None


def normalise(text: str) -> str:
    """*text* with what varies from run to run (ids, durations, timestamps, pids) replaced by
    placeholders, and without whitespace."""
    for pattern, placeholder in _VARYING:
        text = pattern.sub(placeholder, text)
    return re.sub(r"\s+", "", text)


# -- servers ------------------------------------------------------------------------------------

_LISTENING = {"http": r"^HTTP service listening on https?://[^:\s]+:(\d+)",
              "grpc": r"^gRPC service listening on [^:\s]+:(\d+)",
              "metrics": r"^metrics served at http://[^:\s]+:(\d+)/"}


_LOG_LINE = re.compile(r"^[IWEV]\d{4} \d\d:\d\d:\d\d")  # the log's lines (default format)


class DocServer:
    """A ``dagserve serve`` started from a doc's command, on ports the system picks.

    Starting returns at once (a page starts all its servers together, to overlap their
    imports); :meth:`ready` waits for the ports the server prints.
    """

    def __init__(self, command: str, env: dict[str, str], scratch: Path) -> None:
        words = shlex.split(substitute(command, {}, scratch).replace("\\\n", " "), comments=True)
        assert words[:2] == ["dagserve", "serve"], f"a serve block runs 'dagserve serve ...', not {command!r}"
        self.command = command
        self.ports: dict[str, int] = {}
        self.log: list[str] = []
        self._seen = threading.Condition()
        self.process = subprocess.Popen([*words, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._seen:
                self.log.append(line)
                self._seen.notify_all()
        with self._seen:
            self.log.append("")  # end of output
            self._seen.notify_all()

    def ready(self) -> DocServer:
        """Wait until the server has printed every port it bound; AssertionError with its output
        when it exits first or takes longer than SERVER_START_TIMEOUT_S."""
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with self._seen:
            while True:
                for name, pattern in _LISTENING.items():
                    for line in self.log:
                        if (m := re.match(pattern, line)):
                            self.ports[name] = int(m.group(1))
                left = deadline - time.monotonic()
                if len(self.ports) == len(_LISTENING) or "" in self.log or left <= 0:
                    break
                self._seen.wait(left)
        if len(self.ports) < len(_LISTENING):
            self.stop()
            raise AssertionError(f"{self.command!r} did not start: {''.join(self.log)}")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=60)
        if self.process.stdout:
            self.process.stdout.close()


def substitute(text: str, ports: dict[str, int], scratch: Path) -> str:
    """*text* (a command) with the documented ports replaced by the server's and ``/tmp/`` by
    *scratch*."""
    for name, port in ports.items():
        text = text.replace(f"localhost:{DOC_PORTS[name]}", f"127.0.0.1:{port}")
    return text.replace("/tmp/", f"{scratch}/")


def unsubstitute(text: str, ports: dict[str, int], scratch: Path) -> str:
    """*text* (an output) with the server's ports shown as the documented ones, and *scratch*
    as ``/tmp/``."""
    for name, port in ports.items():
        for host in ("127.0.0.1", "localhost"):
            text = text.replace(f"{host}:{port}", f"{host}:{DOC_PORTS[name]}")
    return text.replace(f"{scratch}/", "/tmp/")


def _talks_to_server(text: str) -> bool:
    return any(f"localhost:{port}" in text for port in DOC_PORTS.values())


# -- running a page ---------------------------------------------------------------------------

def environment() -> dict[str, str]:
    """This test's environment with its Python's bin directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    for name in [n for n in env if n.startswith("DAGSERVE_")]:
        del env[name]  # the docs' commands mean their defaults
    return env


def run_block(block: Block, ports: dict[str, int], scratch: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run *block*; its exit status and its output (stdout then stderr, interleaved)."""
    text = substitute(block.text, ports, scratch)
    if block.language in {"python", "py"}:
        script = scratch / f"block_{block.line}.py"
        script.write_text(text)
        argv = [sys.executable, "-c", _PY_RUNNER, str(script)]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", text]
    result = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    return result.returncode, unsubstitute(result.stdout, ports, scratch)


@dataclass
class PageRun:
    """What checking one page found: a line per failure."""

    failures: list[str] = field(default_factory=list)
    ran: int = 0
    compared: int = 0


def check_page(page: Path) -> PageRun:
    """Run every ``run`` block of *page* (starting its servers), compare each ``output`` block
    with what the ``run`` block before it printed, and stop the servers."""
    outcome = PageRun()
    env = environment()
    server: DocServer | None = None
    last: tuple[Block, str] | None = None
    page_blocks = blocks(page)
    with tempfile.TemporaryDirectory(prefix="dagserve-docs-") as tmp:
        scratch = Path(tmp)
        starting = [DocServer(command, env, scratch) for command in servers_of(page_blocks)]
        try:
            for block in page_blocks:
                if block.kind == "serve" or (block.kind == "run" and server is None
                                             and _talks_to_server(block.text)):
                    if server:
                        server.stop()
                    server = starting.pop(0).ready()
                    if block.kind == "serve":
                        banner = "".join(line for line in server.log if not _LOG_LINE.match(line))
                        last = (block, unsubstitute(banner, server.ports, scratch))
                if block.kind == "run":
                    ports = server.ports if server else {}
                    status, output = run_block(block, ports, scratch, env)
                    outcome.ran += 1
                    last = (block, output)
                    expected = int(m.group(1)) if (m := re.fullmatch(r"exits (\d+)", block.reason)) else 0
                    if status != expected:
                        outcome.failures.append(f"{block.where}: exited {status}, not {expected}:\n{output}")
                elif block.kind == "synopsis":
                    outcome.compared += 1
                    if (problem := synopsis_problem(block, env)):
                        outcome.failures.append(problem)
                elif block.kind == "excerpt":
                    outcome.compared += 1
                    if (problem := excerpt_problem(block)):
                        outcome.failures.append(problem)
                elif block.kind == "output":
                    if last is None:
                        outcome.failures.append(f"{block.where}: an output block with no run block before it")
                        continue
                    ran, printed = last
                    outcome.compared += 1
                    if not matches(block.text, printed):
                        outcome.failures.append(
                            f"{block.where}: the output shown differs from what {ran.where} prints.\n"
                            f"shown:\n{block.text}printed:\n{printed}")
                    last = None
        finally:
            for started in [server, *starting]:
                if started:
                    started.stop()
    return outcome


def servers_of(page_blocks: list[Block]) -> list[str]:
    """The server commands a page runs, in order: the default one when a run block talks to a
    server before any serve block, then each serve block's."""
    commands: list[str] = []
    for block in page_blocks:
        if block.kind == "serve":
            commands.append(block.text.strip())
        elif block.kind == "run" and not commands and _talks_to_server(block.text):
            commands.append(DEFAULT_SERVER)
    return commands


def pages_with_commands() -> Iterator[Path]:
    for page in PAGES:
        if any(b.kind in {"run", "serve", "excerpt", "synopsis"} for b in blocks(page)):
            yield page
