"""Any wrong value anywhere gives ManifestError with well-formed, human messages, never a traceback."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nsproxy_appliance import manifest
from nsproxy_appliance.manifest import ManifestError

DATA = Path(__file__).resolve().parent / "data"
ERROR_LINE = re.compile(r"t\.yaml:\d+:\d+: \$(\.[A-Za-z_][\w-]*|\[\d+\]|\['[^']*'\])*: \S.*")
RAW_JSONSCHEMA_PHRASES = ("is not valid under any of the given schemas", "does not match '^", "is valid under each of")
WRONG_VALUES = [None, 0, -1, 70000, 1.5, True, "", "x", "http://", "/", "::", "Ä\r\n", [], [1], {}, {"a": 1}]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, (*prefix, i))


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


BASE = yaml.safe_load((DATA / "issue-example.yaml").read_text())
TLS_BASE = yaml.safe_load((DATA / "tls-example.yaml").read_text())  # every TLS field
BASES = {"issue": BASE, "tls": TLS_BASE}


@pytest.mark.parametrize(
    ("base", "path"), sorted({(name, p) for name, data in BASES.items() for p in paths(data)}, key=str), ids=str
)
def test_every_wrong_value_is_reported_cleanly(base: str, path: tuple[Any, ...]) -> None:
    for value in WRONG_VALUES:
        text = yaml.safe_dump(replaced(BASES[base], path, value), sort_keys=False)
        try:
            manifest.parse(text, "t.yaml")
        except ManifestError as e:
            assert e.errors, (path, value)
            for error in e.errors:
                assert ERROR_LINE.fullmatch(error), (path, value, error)
                assert not any(phrase in error for phrase in RAW_JSONSCHEMA_PHRASES), (path, value, error)


def test_access_log_off_and_bad_values() -> None:
    assert manifest.parse("version: 1\ndaemon: {access_log: off}\ntenants: []\n", "t.yaml").daemon.access_log == "off"
    with pytest.raises(ManifestError) as info:
        manifest.parse("version: 1\ndaemon: {access_log: true}\ntenants: []\n", "t.yaml")
    assert info.value.errors == [
        't.yaml:2:22: $.daemon.access_log: expected "stdout", "off" or an absolute file path; got the boolean true'
    ]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    with pytest.raises(ManifestError) as info:
        manifest.parse("\n".join(lines) + "\n", "t.yaml")
    assert any("more than" in e and "nodes" in e for e in info.value.errors), info.value.errors
