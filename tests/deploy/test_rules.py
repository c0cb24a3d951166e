"""The chart's PrometheusRule under ``promtool``: the rules parse, the recording rule the
autoscalers read computes the average queue time per request per pod, and the alerts fire."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from .tools import by_kind, render, tool

HERE = Path(__file__).parent


def _rules(tmp_path: Path) -> Path:
    rule = by_kind(render("default"))["PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_promtool_checks_and_unit_tests_the_rules(tmp_path: Path) -> None:
    """``promtool check rules`` and ``promtool test rules`` (tests/deploy/rules_test.yaml) pass."""
    promtool = tool("promtool")
    rules = _rules(tmp_path)
    shutil.copy(HERE / "rules_test.yaml", tmp_path / "rules_test.yaml")
    check = subprocess.run(check=False, args=[promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(check=False, args=[promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with a wrong expected value is refused."""
    promtool = tool("promtool")
    _rules(tmp_path)
    text = (HERE / "rules_test.yaml").read_text().replace("value: 9990 ", "value: 9991 ")
    (tmp_path / "rules_test.yaml").write_text(text)
    test = subprocess.run(check=False, args=[promtool, "test", "rules", "rules_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode != 0
    assert "9.991E+03" in test.stdout + test.stderr  # promtool names the expectation that failed
