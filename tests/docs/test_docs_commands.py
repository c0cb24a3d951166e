"""Every command the README and docs/ show is run, against a real ``dagserve serve`` started the
way the page says, and every output they show is what that command prints (the markers and the
normalisation are described in tests/docs/doccheck.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import doccheck
from .doccheck import PAGES, ROOT


def test_every_command_block_is_run_or_says_why_not() -> None:
    """A shell, Python or text block (or one naming no language) with no marker fails, naming
    the page and line."""
    problems = [problem for page in PAGES for problem in doccheck.unclassified(page)]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("page", list(doccheck.pages_with_commands()), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_commands_print_what_the_page_shows(page: Path) -> None:
    """Each run block of the page exits 0 and prints the output block shown after it."""
    outcome = doccheck.check_page(page)
    assert outcome.ran + outcome.compared > 0
    assert not outcome.failures, "\n\n".join(outcome.failures)


# -- the checker itself, on pages made for the purpose ------------------------------------------

PAGE = """\
# A page

<!-- test: serve -->
```bash
dagserve serve --model-repository examples/pipelines
```

<!-- test: output -->
```text
...
model iris version %s: READY
...
HTTP service listening on http://127.0.0.1:8000
...
```

<!-- test: run -->
```bash
curl -s localhost:8000/v2/models/iris/infer -d '{"inputs": [
  {"name": "FEATURES", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}],
  "outputs": [{"name": "LABEL"}]}'
```

<!-- test: output -->
```json
{"model_name":"iris","model_version":"1",
 "outputs":[{"name":"LABEL","datatype":"BYTES","shape":[1,1],"data":["%s"]}]}
```
"""


@pytest.mark.slow
def test_a_shown_output_that_differs_fails_naming_both_blocks(tmp_path: Path) -> None:
    """The same server and command pass with the outputs they print and fail with others, each
    failure naming the output block and the block that printed something else."""
    good = tmp_path / "good.md"
    good.write_text(PAGE % ("1", "setosa"))
    outcome = doccheck.check_page(good)
    assert (outcome.ran, outcome.compared, outcome.failures) == (1, 2, [])

    wrong = tmp_path / "wrong.md"
    wrong.write_text(PAGE % ("2", "virginica"))
    failures = doccheck.check_page(wrong).failures
    assert len(failures) == 2
    assert failures[0].startswith(f"{wrong}:9: the output shown differs from what {wrong}:4 prints")
    assert "model iris version 1: READY" in failures[0]
    assert failures[1].startswith(f"{wrong}:25: the output shown differs from what {wrong}:18 prints")
    assert '"data":["setosa"]' in failures[1]


def test_a_command_block_without_a_marker_is_named() -> None:
    """unclassified() names an unmarked bash block, an untyped block, a skip with no reason, an
    unmarked text block and a message with no id, and accepts yaml with no marker and a figure."""
    page = ROOT / "tests" / "docs" / "unmarked.md"
    problems = doccheck.unclassified(page)
    assert [p.split(": ", 1)[0] for p in problems] == [f"tests/docs/unmarked.md:{n}" for n in (3, 8, 13, 26, 31)]
    assert "a bash block with no <!-- test: run|output|serve|skip: why --> marker" in problems[0]
    assert "give it a language" in problems[1]
    assert "'test: skip' needs a reason" in problems[2]
    assert "a text block with no marker before it: <!-- test: output -->" in problems[3]
    assert "'test: message' needs an id" in problems[4]


def test_normalising_keeps_values_and_drops_only_what_varies() -> None:
    """Error ids, durations, timestamps and whitespace compare equal; a different number does not."""
    shown = "model failed (error id 1a2b3c)\nloaded in 0.04 s at 2026-12-02T13:05:55.829575Z"
    printed = "model failed (error id ffee00)  loaded in 1.5 s at 2027-01-01T00:00:00Z"
    assert doccheck.normalise(shown) == doccheck.normalise(printed)
    assert doccheck.normalise("[ 1. -1.  1.]") == doccheck.normalise("[1. -1. 1.]")
    assert doccheck.normalise("[1. -1. 1.]") != doccheck.normalise("[1. 1. 1.]")


def test_a_synopsis_naming_a_flag_the_command_lacks_fails(tmp_path: Path) -> None:
    """A usage summary is checked against the command's --help, line by line for each
    subcommand: a misspelt flag is named with its subcommand, the real ones pass."""
    page = tmp_path / "synopsis.md"
    page.write_text("<!-- test: synopsis: dagserve serve -->\n```text\n"
                    "dagserve serve --model-repository PATH [--http-port 8000] [--htp-port N]\n"
                    "dagserve graph PATH PIPELINE [--format dot] [--http-port 8000]\n```\n")
    [failure] = doccheck.check_page(page).failures
    assert failure == f"{page}:2: not options: --htp-port (dagserve serve), --http-port (dagserve graph)"


def test_an_excerpt_that_left_its_file_fails(tmp_path: Path) -> None:
    """An excerpt passes when its lines are the file's, in order (comments and ``...`` aside),
    and fails naming the first line the file lacks or has earlier."""
    marker = "<!-- test: excerpt: examples/pipelines/iris/config.yaml -->\n```yaml\n"
    good = "backend: pipeline   # annotated\n...\n    - {name: classify, model: iris_logreg, inputs: {SCALED: standardize.SCALED}}\n"
    page = tmp_path / "excerpt.md"
    page.write_text(marker + good + "```\n")
    assert doccheck.check_page(page).failures == []
    page.write_text(marker + good.replace("iris_logreg", "iris_svm") + "```\n")
    [failure] = doccheck.check_page(page).failures
    assert "'- {name: classify, model: iris_svm" in failure and "is not in examples/pipelines/iris/config.yaml" in failure
    out_of_order = good.splitlines(keepends=True)
    page.write_text(marker + out_of_order[2] + out_of_order[0] + "```\n")
    [failure] = doccheck.check_page(page).failures
    assert "'backend: pipeline   # annotated' is not in" in failure
