"""daemon.log_format: the daemon log's text and JSON formats (pure formatting), and the field from
the manifest through the runtime config."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from nsproxy_appliance import manifest, model, runtime_config
from nsproxy_appliance.daemon import daemonlog
from nsproxy_appliance.errors import RuntimeConfigError
from nsproxy_appliance.runtime_config import Paths

TEXT_FIELD = re.compile(r'(?:^| )([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)')


def record(message: str, level: int = logging.INFO, exc_info=None, **fields) -> logging.LogRecord:
    rec = logging.LogRecord("nsproxyd", level, __file__, 1, message, (), exc_info)
    rec.__dict__.update(daemonlog.fields(**fields))
    return rec


def text(message: str, **fields) -> str:
    return daemonlog.TextFormatter().format(record(message, **fields))


def parsed(line: str) -> dict[str, str]:
    return {k: json.loads(v) if v.startswith('"') else v for k, v in TEXT_FIELD.findall(line)}


# -- text ---------------------------------------------------------------------------------------------


def test_text_line_is_time_pid_level_message_then_fields() -> None:
    line = text("reload", trigger="SIGHUP", generation="9a41c0de", unchanged=3)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} nsproxyd\[\d+\] INFO reload trigger=SIGHUP generation=9a41c0de "
        r"unchanged=3",
        line,
    ), line


@pytest.mark.parametrize(
    "value, shown",
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("", '""'),
        ("ünïcode", "ünïcode"),
        (True, "true"),
        (0.5, "0.5"),
        (["acme", "globex"], "acme,globex"),
        (("x y", "z"), '"x y,z"'),
        ({"b", "a"}, "a,b"),
    ],
)
def test_text_values_are_bare_or_json_quoted(value, shown) -> None:
    line = text("m", key=value)
    assert line.endswith(f" m key={shown}"), line


def test_text_fields_split_back_into_what_was_logged() -> None:
    values = {"error": 'cannot listen on 10.9.9.9:80: "Cannot assign"', "tenant": "bad", "path": "/a b=c"}
    assert parsed(text("tenant failed", **values)) == values


def test_text_leaves_out_empty_values_and_flattens_mappings() -> None:
    line = text("reload", added=[], error=None, drained={"connections": 2, "aborted": 0}, failed=["x"])
    assert line.endswith(" reload drained.connections=2 drained.aborted=0 failed=x"), line
    assert "{" not in line and "'" not in line


def test_a_line_without_fields_is_the_message_alone() -> None:
    assert text("plain message %s").endswith(" INFO plain message %s")


def test_text_keeps_the_traceback_after_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed", level=logging.ERROR, exc_info=sys.exc_info(), tenant="acme")
    lines = daemonlog.TextFormatter().format(rec).splitlines()
    assert lines[0].endswith(" ERROR failed tenant=acme")
    assert lines[-1] == "ValueError: boom"


# -- JSON ---------------------------------------------------------------------------------------------


def test_json_record_has_time_level_logger_pid_message_and_the_fields() -> None:
    rec = record("reload", level=logging.WARNING, added=["acme"], drained={"connections": 0, "aborted": 0})
    out = json.loads(daemonlog.JsonFormatter().format(rec))
    assert list(out) == ["time", "level", "logger", "pid", "message", "added", "drained"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["time"])
    assert (out["level"], out["logger"], out["message"]) == ("warning", "nsproxyd", "reload")
    assert out["added"] == ["acme"] and out["drained"] == {"connections": 0, "aborted": 0}


def test_json_fields_never_override_the_record_keys() -> None:
    rec = record("real", level_="x")
    rec.__dict__.update(daemonlog.fields(message="fake", time=1, level="debug", pid=0, logger="x", level_="x"))
    out = json.loads(daemonlog.JsonFormatter().format(rec))
    assert (out["message"], out["level"], out["logger"]) == ("real", "info", "nsproxyd")
    assert out["time"] != 1 and out["pid"] != 0 and out["level_"] == "x"


def test_json_is_one_line_with_the_traceback_as_a_field() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("failed", level=logging.ERROR, exc_info=sys.exc_info())
    line = daemonlog.JsonFormatter().format(rec)
    assert "\n" not in line
    assert json.loads(line)["exception"].endswith("ValueError: boom\nsecond line")


def test_json_turns_what_it_cannot_encode_into_text() -> None:
    out = json.loads(daemonlog.JsonFormatter().format(record("m", names={"b", "a"}, obj=object())))
    assert out["names"] == ["a", "b"] and out["obj"].startswith("<object object")


def test_a_message_with_arguments_is_formatted() -> None:
    rec = logging.LogRecord("nsproxyd", logging.INFO, __file__, 1, "tenant %s: %d", ("acme", 3), None)
    assert json.loads(daemonlog.JsonFormatter().format(rec))["message"] == "tenant acme: 3"


# -- the setting, from the manifest to the daemon -------------------------------------------------------

MANIFEST = 'version: 1\ndaemon:\n  log_format: {}\ntenants:\n  - name: acme\n    listen: ["127.0.0.1:8080"]\n'
MANIFEST += '    upstream: "http://127.0.0.1:9000"\n'


def test_the_manifest_sets_log_format() -> None:
    assert manifest.parse(MANIFEST.format("json")).daemon.log_format == "json"
    assert manifest.parse(MANIFEST.format("text")).daemon.log_format == "text"
    assert model.DaemonSettings().log_format == "text"


def test_an_unknown_log_format_is_an_error_at_its_line() -> None:
    with pytest.raises(manifest.ManifestError) as e:
        manifest.parse(MANIFEST.format("xml"), "t.yaml")
    assert e.value.errors == ["t.yaml:3:15: $.daemon.log_format: expected one of: text, json; got 'xml'"]


def _render(log_format: str) -> dict:
    m = manifest.parse(MANIFEST.format(log_format))
    return runtime_config.render(m, Paths(state_dir="/s", runtime_dir="/r"))


def test_the_default_format_is_not_written_so_the_previous_daemon_reads_the_config() -> None:
    """Upgrading the applier first must not change the generation of an unchanged manifest, nor
    hand a running daemon of the version before a field it would reject."""
    default = _render("text")
    assert "log_format" not in default["daemon"]
    m = manifest.parse(MANIFEST.format("text").replace("  log_format: text\n", "  drain_timeout: 30\n"))
    assert runtime_config.render(m, Paths(state_dir="/s", runtime_dir="/r"))["generation"] == default["generation"]
    assert runtime_config.parse(default).daemon.log_format == "text"


def test_json_is_written_and_read_back() -> None:
    config = _render("json")
    assert config["daemon"]["log_format"] == "json"
    assert runtime_config.parse(config).daemon.log_format == "json"
    assert config["generation"] != _render("text")["generation"]


def test_the_daemon_refuses_an_unknown_log_format() -> None:
    config = _render("json")
    config["daemon"]["log_format"] = "xml"
    with pytest.raises(RuntimeConfigError, match="log_format must be one of text, json, got 'xml'"):
        runtime_config.parse(config)
