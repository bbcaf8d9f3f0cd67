"""The benchmark harness refuses comparisons that would measure one checkout twice.

A before/after run that points ``PYTHONPATH`` at a worktree of an older commit but
starts ``python -m firewall`` in the repository root imports this checkout both
times; the runners say so instead of printing a ratio of the same code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import bench_instructions, bench_proxy

OTHER = "PYTHONPATH=/tmp/before {python} -m firewall serve --config {config} --port {port}"


def test_a_pythonpath_comparison_without_dash_p_is_refused() -> None:
    with pytest.raises(bench_proxy.BenchError, match="-P"):
        bench_proxy.check_template(OTHER)


@pytest.mark.parametrize(
    "template",
    [
        OTHER.replace("{python} -m", "{python} -P -m"),
        bench_proxy.DEFAULT_FIREWALL_CMD,
        "{python} loadtests/minimal_proxy.py --port {port} --upstream {upstream}",
    ],
)
def test_commands_that_import_what_they_name_pass(template: str) -> None:
    bench_proxy.check_template(template)


def test_dash_p_makes_pythonpath_decide_in_the_repository_root(tmp_path: Path) -> None:
    # The fact the check rests on: from the repository root, -m imports this checkout
    # unless -P leaves the working directory off sys.path.
    fake = tmp_path / "firewall"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("print('other checkout')\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    root = Path(bench_proxy.REPO_ROOT)
    with_p = subprocess.run(
        [sys.executable, "-P", "-m", "firewall", "version"], cwd=root, env=env, capture_output=True, text=True
    )
    assert with_p.stdout.strip() == "other checkout"
    without = subprocess.run(
        [sys.executable, "-m", "firewall", "version"], cwd=root, env=env, capture_output=True, text=True
    )
    assert without.stdout.strip() != "other checkout"


def test_the_measured_config_raises_only_the_inline_budget(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("apiVersion: trigger-firewall.io/v1alpha1\nkind: FirewallConfig\n")
    measured = bench_instructions.measuring_config(config, tmp_path)
    assert measured.read_text() == config.read_text() + "server:\n  inline_budget_ms: 10000\n"
    config.write_text("server:\n  port: 1\n")
    with pytest.raises(bench_proxy.BenchError, match="inline_budget_ms"):
        bench_instructions.measuring_config(config, tmp_path)


@pytest.mark.parametrize("prefix", ["", "env "])
def test_leading_environment_words_become_the_counted_process_environment(prefix: str) -> None:
    """valgrind must start the Python itself: with ``env`` first it would count ``env``."""
    argv, env = bench_instructions._argv_and_env(
        prefix + "PYTHONPATH=/work/before {python} -P -m firewall serve", {"python": "/usr/bin/python3"}
    )
    assert argv == ["/usr/bin/python3", "-P", "-m", "firewall", "serve"]
    assert env["PYTHONPATH"] == "/work/before"
