"""The command line: check-config, config-schema, version, and the shipped example config."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from firewall.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "deploy/config/firewall.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_config_lists_every_error_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "mode: enforce\n"
        "server: {port: 70000, prot: 1}\n"
        "detectors:\n"
        "  - {name: invisible_chars, threshold: 1.5}\n"
    )
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "server.port" in err
    assert "server.prot" in err
    assert "detectors.0.threshold" in err


def test_check_config_reports_unknown_detector_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("detectors:\n  - {name: nope}\n")
    assert main(["check-config", str(bad)]) == 1
    assert "unknown detector type 'nope'" in capsys.readouterr().err


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "/nonexistent/firewall.yaml"]) == 1
    assert "not found" in capsys.readouterr().err


def test_config_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema"]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"server", "upstream", "routing", "detectors", "stream", "audit"} <= set(schema["properties"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip()
