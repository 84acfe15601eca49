"""The CLI's GitOps surface through the real console scripts: `nsproxy validate -` (standard
input), validation errors as JSON objects, `nsproxy schema`, and `--version` on every command."""

from __future__ import annotations

import json
import platform
import subprocess
import tomllib

import pytest
from support import REPO, program, run_cli

import nsproxy_appliance

VALID = 'version: 1\ntenants:\n  - name: acme\n    listen: ["127.0.0.1:8080"]\n    upstream: "http://127.0.0.1:9000"\n'
# Two errors, on lines 3 and 5: an invalid name and an unknown field.
INVALID = 'version: 1\ntenants:\n  - name: Bad_Name\n    upstream: "http://127.0.0.1:9000"\n    upstreem: x\n'
PROBLEM_KEYS = ["file", "line", "column", "path", "message"]


def console_scripts() -> list[str]:
    return sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


# -- validate - ---------------------------------------------------------------------------------


def test_validate_reads_a_valid_manifest_from_standard_input() -> None:
    run = run_cli("nsproxy", "validate", "-", stdin=VALID)
    assert run.returncode == 0, run
    assert run.stdout == "<stdin>: valid (1 tenant)\n"


def test_validate_names_standard_input_in_its_errors() -> None:
    run = run_cli("nsproxy", "validate", "-", stdin=INVALID)
    assert run.returncode == 1, run
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith("<stdin>:") for line in lines), run
    assert any(line.startswith("<stdin>:3:11: $.tenants[0].name: ") for line in lines), run
    assert any(line.startswith("<stdin>:5:5: $.tenants[0].upstreem: unknown field") for line in lines), run


def test_validate_mixes_files_and_standard_input(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    run = run_cli("nsproxy", "validate", str(good), "-", "--output", "json", stdin=INVALID)
    assert run.returncode == 1, run
    first, second = run.json["manifests"]
    assert (first["manifest"], first["valid"], first["problems"]) == (str(good), True, [])
    assert (second["manifest"], second["valid"]) == ("<stdin>", False)


def test_standard_input_only_once() -> None:
    run = run_cli("nsproxy", "validate", "-", "-", stdin=VALID)
    assert run.returncode == 1 and "only once" in run.stderr, run


def test_empty_or_closed_standard_input_is_an_error_not_a_hang() -> None:
    empty = run_cli("nsproxy", "validate", "-")  # run_cli gives /dev/null when there is no stdin
    assert empty.returncode == 1 and empty.stderr.startswith("<stdin>:1:1: $: "), empty
    closed = subprocess.run(
        ["sh", "-c", 'exec "$0" validate - <&-', program("nsproxy")], capture_output=True, text=True, timeout=60
    )
    assert closed.returncode == 1, closed
    assert closed.stderr == "<stdin>:1:1: $: standard input is closed\n", closed.stderr


def test_validate_only_of_the_applier_reads_standard_input() -> None:
    run = run_cli("nsproxy-apply", "-", "--validate-only", stdin=INVALID)
    assert run.returncode == 1 and "<stdin>:3:11:" in run.stderr, run
    run = run_cli("nsproxy-apply", "-", "--validate-only", stdin=VALID)
    assert run.returncode == 0 and "<stdin>: valid" in run.stdout, run


# -- JSON errors as objects -----------------------------------------------------------------------


def test_json_errors_are_objects_beside_the_strings_they_always_were(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID)
    run = run_cli("nsproxy", "validate", str(bad), "--output", "json")
    assert run.returncode == 1, run
    report = run.json
    assert report["valid"] is False
    [entry] = report["manifests"]
    assert set(entry) == {"manifest", "valid", "errors", "problems", "tenants"}
    assert all(isinstance(e, str) for e in entry["errors"])  # today's readers keep working
    problems = entry["problems"]
    assert len(problems) == len(entry["errors"]) >= 2
    for problem, text in zip(problems, entry["errors"], strict=True):
        assert list(problem) == PROBLEM_KEYS
        assert isinstance(problem["line"], int) and isinstance(problem["column"], int)
        # the object says exactly what its string says
        assert (
            text == f"{problem['file']}:{problem['line']}:{problem['column']}: {problem['path']}: {problem['message']}"
        )
    by_path = {p["path"]: p for p in problems}
    name = by_path["$.tenants[0].name"]
    assert (name["file"], name["line"], name["column"]) == (str(bad), 3, 11)
    assert "Bad_Name" in name["message"]
    assert by_path["$.tenants[0].upstreem"]["line"] == 5


def test_json_problems_from_standard_input_name_stdin() -> None:
    run = run_cli("nsproxy", "validate", "-", "--output", "json", stdin=INVALID)
    [entry] = run.json["manifests"]
    assert {p["file"] for p in entry["problems"]} == {"<stdin>"}


def test_plan_of_an_invalid_manifest_reports_problems_too() -> None:
    """Before any root check or kernel access: the manifest is checked first."""
    run = run_cli("nsproxy", "plan", "-", "--output", "json", stdin=INVALID)
    assert run.returncode == 1, run
    report = run.json
    assert report["changed"] is False and report["errors"]
    assert [p["path"] for p in report["problems"]] == [e.split(": ")[1] for e in report["errors"]]


def test_valid_json_report_has_empty_problems() -> None:
    [entry] = run_cli("nsproxy", "validate", "-", "--output", "json", stdin=VALID).json["manifests"]
    assert entry == {"manifest": "<stdin>", "valid": True, "errors": [], "problems": [], "tenants": 1}


# -- nsproxy schema -------------------------------------------------------------------------------


def test_schema_prints_the_shipped_schema_byte_for_byte() -> None:
    run = run_cli("nsproxy", "schema")
    assert run.returncode == 0, run
    assert run.stdout == (REPO / "schemas" / "tenants.schema.json").read_text()
    schema = json.loads(run.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "tenants" in schema["properties"]


def test_the_printed_schema_validates_like_nsproxy(tmp_path) -> None:
    """A config repository's copy (`nsproxy schema > schemas/tenants.schema.json`) is the schema
    nsproxy checks against: what it rejects, nsproxy validate rejects."""
    import jsonschema
    import yaml

    schema = json.loads(run_cli("nsproxy", "schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(yaml.safe_load(VALID)))
    assert list(validator.iter_errors(yaml.safe_load(INVALID)))


# -- --version ------------------------------------------------------------------------------------


def test_every_console_script_is_known_here() -> None:
    """A new [project.scripts] entry gets --version checked below (and must have it)."""
    assert {"nsproxy", "nsproxy-apply", "nsproxyd"} <= set(console_scripts())


@pytest.mark.parametrize("script", console_scripts())
def test_every_console_script_prints_its_version(script: str) -> None:
    run = run_cli(script, "--version")
    assert run.returncode == 0, run
    assert run.stdout == nsproxy_appliance.version_line(script) + "\n"
    assert run.stdout == f"{script} {nsproxy_appliance.version()} (Python {platform.python_version()})\n"
    assert run.stderr == ""


@pytest.mark.parametrize("script", console_scripts())
def test_version_is_in_every_help(script: str) -> None:
    run = run_cli(script, "--help")
    assert run.returncode == 0 and "--version" in run.stdout, run
