"""Fuzzing the manifest loader: for ANY input, manifest.parse/load return a Manifest or raise
ManifestError whose every line reads FILE:LINE:COL: $.path: message; never another exception,
never a crash, never a hang.

Inputs: random YAML documents (tags, anchors, aliases, merge keys, flow and block styles), random
text and bytes, mutations of the shipped examples and test data, deep nesting, odd numbers; plus a
parametrized corpus of inputs that crashed the loader, also run through the real CLI.

CI runs NSPROXY_FUZZ_EXAMPLES (default 200) examples per property (the file takes 10-30 s on
the 2-core CI host). The soak:
    NSPROXY_FUZZ_EXAMPLES=100000 .venv/bin/pytest -q tests/unit/test_manifest_fuzz.py -k property
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import run_cli

from nsproxy_appliance import manifest
from nsproxy_appliance.manifest import MAX_BYTES, MAX_DEPTH, ManifestError, format_path
from nsproxy_appliance.model import Manifest

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted([*ROOT.glob("examples/*.yaml"), *(ROOT / "tests/unit/data").glob("*.yaml")])
EXAMPLES = int(os.environ.get("NSPROXY_FUZZ_EXAMPLES", "200"))
FILENAME = "fuzz.yaml"

# A JSON path as format_path writes it: .identifier, [index] or ['key'] (a repr, maybe cut with …).
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_PATH = rf"\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[-?\d+\]|\[(?:{_QUOTED})…?\])*"
_LINE = re.compile(rf"(?P<file>.+?):(?P<line>[1-9]\d*):(?P<column>[1-9]\d*): {_PATH}: \S[^\n]*")

FUZZ = settings(
    max_examples=EXAMPLES,
    # Generous: a document parses in milliseconds; this catches a hang, not a slow machine.
    deadline=timedelta(seconds=5),
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_error(e: ManifestError, filename: str = FILENAME) -> None:
    """The contract of every ManifestError: well-formed lines, the same errors as JSON objects."""
    assert e.errors, "a ManifestError without errors"
    assert str(e) == "\n".join(e.errors)
    for error, as_dict in zip(e.errors, e.as_dicts(), strict=True):
        match = _LINE.fullmatch(error)
        assert match and match["file"] == filename, error
        assert error.splitlines() == [error] and "\t" not in error and "\x1b" not in error, repr(error)
        assert "internal error" not in error, error
        assert as_dict["file"] == filename
        assert (as_dict["line"], as_dict["column"]) == (int(match["line"]), int(match["column"])), error
        assert error == f"{filename}:{as_dict['line']}:{as_dict['column']}: {as_dict['path']}: {as_dict['message']}"
        assert len(error) < 3000, error


def check_parse(text: str) -> None:
    try:
        result = manifest.parse(text, FILENAME)
    except ManifestError as e:
        check_error(e)
    else:
        assert isinstance(result, Manifest)


def check_load(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILENAME
        path.write_bytes(data)
        try:
            result = manifest.load(path)
        except ManifestError as e:
            check_error(e, str(path))
        else:
            assert isinstance(result, Manifest)


# --- random YAML documents --------------------------------------------------------------------

WORDS = [
    "version", "tenants", "defaults", "daemon", "name", "listen", "upstream", "netns", "links", "limits",
    "addresses", "mtu", "kind", "tenant_id", "tenant_header", "path", "url", "from", "unix", "access_log",
    "header_timeout", "body_timeout", "max_connections", "a", "acme", "dummy", "nsp0", "tenant", "host",
]  # fmt: skip
SCALARS = [
    "1", "0", "-1", "1.5", "1e400", "-.inf", ".nan", "0x1F", "0o17", "017", "0b101", "1_000", "190:20:30",
    "1:2:3:4:5:6:7:8:9", "9" * 4400, "0x" + "f" * 4000, "1" * 120, "1e" + "9" * 30, "yes", "no", "on", "off", "~",
    "null", "true", "False", "2001-12-14", "2001-13-45", "2001-02-30", "2001-12-14t21:59:43.10-05:00",
    "2001-01-01 00:00:00 +99:00", "0000-01-01", '""', "''", '"\\u0041"', '"\\x00"', '"\\ud800"', "'it''s'",
    '"\\t\\r\\n"', "127.0.0.1:8080", '"[::1]:80"', "http://127.0.0.1:9000", "https://x", "/run/m.sock",
    "169.254.169.254/32", '"fd00::1/128"', "X-Tenant-ID", "Host", "stdout", "é", "=", "<<", "'" + "x" * 300 + "'",
]  # fmt: skip
RAW = ["-", "?", ":", "|", ">", "@", "`", "%", "&", "*", "!", "#", "'", '"', "\t", "\ufeff", "\x85", "\u2028", "- x"]
TAGS = [
    "!!int", "!!float", "!!bool", "!!null", "!!str", "!!timestamp", "!!binary", "!!merge", "!!value", "!!set",
    "!!omap", "!!pairs", "!!map", "!!seq", "!!python/object:os.system", "!!python/tuple", "!x", "!", "!<!>",
    "!<tag:yaml.org,2002:int>", "!<tag:yaml.org,2002:str>", "!e!x",
]  # fmt: skip
ANCHORS = ["a", "b", "c"]


@dataclass
class Node:
    kind: str  # scalar, alias, seq, map
    tag: str | None = None
    anchor: str | None = None
    text: str = ""  # scalar text or alias name
    items: tuple[Any, ...] = ()  # Nodes, or (key, value) pairs for maps
    flow: bool = True


def yaml_nodes(*, wild: bool) -> st.SearchStrategy[Node]:
    """Random YAML node trees; `wild` ones carry odd tags, anchors and syntax-breaking scalars,
    tame ones reach the schema and the builder more often."""
    tags = st.sampled_from([None] * 12 + TAGS) if wild else st.none()
    anchors = st.sampled_from([None] * 6 + ANCHORS)

    def node(kind: str, **fields: Any) -> st.SearchStrategy[Node]:
        return st.builds(Node, kind=st.just(kind), tag=tags, anchor=anchors, **fields)

    scalars = node("scalar", text=st.sampled_from(WORDS + SCALARS))
    leaves = st.one_of(
        *[scalars] * 8,
        st.builds(Node, kind=st.just("alias"), text=st.sampled_from(ANCHORS)),
        *([node("scalar", text=st.sampled_from(RAW) | st.text(max_size=8))] if wild else []),
    )
    key_words = ["<<", "<<", "? x", "[a]", "1", "~", "2001-01-01"] if wild else ["<<", "1", "~"]
    keys = scalars | node("scalar", text=st.sampled_from(key_words))
    return st.recursive(
        leaves,
        lambda children: (
            node("seq", items=st.lists(children, max_size=4).map(tuple), flow=st.booleans())
            | node(
                "map",
                items=st.lists(st.tuples(keys | children if wild else keys, children), max_size=4).map(tuple),
                flow=st.booleans(),
            )
        ),
        max_leaves=25,
    )


class Renderer:
    """YAML text for a Node: flow collections inline, block collections on the following lines.

    With `strict`, aliases only name anchors already defined and no anchor is defined twice, so
    most documents get past the composer to the constructor, the schema and the builder.
    """

    def __init__(self, strict: bool):
        self.strict = strict
        self.defined: set[str] = set()

    def props(self, node: Node) -> str:
        anchor = node.anchor
        if anchor is not None and self.strict and anchor in self.defined:
            anchor = None
        if anchor is not None:
            self.defined.add(anchor)
        return "".join(f"{p} " for p in (node.tag, f"&{anchor}" if anchor else None) if p)

    def render(self, node: Node, indent: int = 0, in_flow: bool = False) -> str:
        if node.kind == "alias":
            if self.strict and node.text not in self.defined:
                self.defined.add(node.text)
                return f"&{node.text} x"
            return f"*{node.text}"
        props = self.props(node)
        if node.kind == "scalar":
            return f"{props}{node.text}"
        if in_flow or node.flow or not node.items:  # inside a flow collection everything is flow
            if node.kind == "seq":
                return props + "[" + ", ".join(self.render(item, in_flow=True) for item in node.items) + "]"
            pairs = [f"{self.render(k, in_flow=True)}: {self.render(v, in_flow=True)}" for k, v in node.items]
            return props + "{" + ", ".join(pairs) + "}"
        pad = " " * indent
        lines = [props.rstrip()] if props else []
        for item in node.items:
            if node.kind == "seq":
                lines.append(f"{pad}- {self.block_value(item, indent + 2)}")
            else:
                key, value = item
                key_text = self.render(key, in_flow=True)
                lines.append(f"{pad}{key_text}: {self.block_value(value, indent + 2)}")
        return "\n".join(lines)

    def block_value(self, node: Node, indent: int) -> str:
        text = self.render(node, indent)
        block = node.kind in ("seq", "map") and not node.flow and node.items
        return "\n" + text if block and not text.startswith(("!", "&")) else text


# Where a random node goes in an otherwise valid manifest (so it reaches the schema and the builder).
MANIFEST_SLOTS = {
    "listen": "version: 1\ndefaults: {upstream: 'http://127.0.0.1:9000'}\ntenants:\n  - name: a\n    listen: %s\n",
    "tenant": "version: 1\ndefaults: {upstream: 'http://127.0.0.1:9000'}\ntenants:\n  - %s\n",
    "tenants": "version: 1\ndefaults: {upstream: 'http://127.0.0.1:9000'}\ntenants: %s\n",
    "upstream": "version: 1\ntenants:\n  - name: a\n    listen: ['127.0.0.1:80']\n    upstream: %s\n",
    "links": "version: 1\ndefaults: {upstream: 'http://h'}\ntenants:\n  - name: a\n    listen: [127.0.0.1:1]\n"
    "    links: %s\n",
    "limits": "version: 1\ndefaults:\n  upstream: http://h\n  limits: %s\ntenants: []\n",
    "daemon": "version: 1\ntenants: []\ndaemon: %s\n",
    "defaults": "version: 1\ntenants: [{name: a, listen: ['127.0.0.1:80']}]\ndefaults: %s\n",
}


@FUZZ
@given(yaml_nodes(wild=True) | yaml_nodes(wild=False), st.booleans(), st.sampled_from(sorted(MANIFEST_SLOTS)))
def test_property_random_yaml_documents(node: Node, strict: bool, slot: str) -> None:
    check_parse(Renderer(strict).render(node))
    check_parse(MANIFEST_SLOTS[slot] % Renderer(strict).block_value(node, 6))


@FUZZ
@given(st.text(max_size=300))
def test_property_random_text(text: str) -> None:
    check_parse(text)


@FUZZ
@given(st.binary(max_size=300))
def test_property_random_bytes(data: bytes) -> None:
    check_load(data)


# --- mutations of the shipped examples ---------------------------------------------------------

SEED_TEXTS = [path.read_text(encoding="utf-8") for path in SEEDS]


def _lines_op(op: Callable[[list[str], int, int], list[str]]) -> Callable[[str, int, int], str]:
    def apply(text: str, i: int, j: int) -> str:
        lines = text.split("\n")
        return "\n".join(op(lines, i % len(lines), j % len(lines)))

    return apply


def _char(code: int) -> str:
    code %= 0x110000
    return chr(code) if not 0xD800 <= code < 0xE000 else "\x00"  # no lone surrogates: files are UTF-8


TEXT_MUTATIONS: dict[str, Callable[[str, int, int], str]] = {
    "delete line": _lines_op(lambda lines, i, j: lines[:i] + lines[i + 1 :]),
    "duplicate line": _lines_op(lambda lines, i, j: lines[: i + 1] + lines[i:]),
    "move line": _lines_op(lambda lines, i, j: [*lines[:j], lines[i], *lines[j:]]),
    "dedent line": _lines_op(lambda lines, i, j: [*lines[:i], lines[i].lstrip(), *lines[i + 1 :]]),
    "indent line": _lines_op(lambda lines, i, j: [*lines[:i], " " * (j % 5) + lines[i], *lines[i + 1 :]]),
    "truncate": lambda text, i, j: text[: i % (len(text) + 1)],
    "delete chars": lambda text, i, j: text[: i % len(text)] + text[i % len(text) + j % 7 :],
    "flip char": lambda text, i, j: text[: i % len(text)] + chr(j % 0x3000) + text[i % len(text) + 1 :],
    "insert char": lambda text, i, j: text[: i % len(text)] + _char(j) + text[i % len(text) :],
}  # fmt: skip


@FUZZ
@given(
    st.sampled_from(SEED_TEXTS),
    st.lists(
        st.tuples(st.sampled_from(sorted(TEXT_MUTATIONS)), st.integers(0, 10_000), st.integers(0, 0x10FFFF)),
        min_size=1,
        max_size=4,
    ),
)
def test_property_text_mutations_of_the_examples(text: str, mutations: list[tuple[str, int, int]]) -> None:
    for name, i, j in mutations:
        text = TEXT_MUTATIONS[name](text or "\n", i, j)
    check_parse(text)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _typed(scalar: str) -> Any:
    """What PyYAML reads `scalar` as, when it can (and can write it back), else the text itself."""
    try:
        value = yaml.safe_load(f"x: {scalar}")["x"]
        yaml.safe_dump(value)
    except (yaml.YAMLError, ValueError, KeyError, IndexError, AttributeError):
        return scalar
    return value


REPLACEMENTS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(SCALARS).map(_typed),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(WORDS), st.integers(), max_size=3),
)


@FUZZ
@given(st.data())
def test_property_node_mutations_of_the_examples(data: st.DataObject) -> None:
    tree = yaml.safe_load(data.draw(st.sampled_from(SEED_TEXTS)))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(tree)))
        if not path:
            continue
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["delete", "duplicate", "replace", "retype"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(path[-1], parent[path[-1]])
        elif action == "duplicate":
            parent[f"{path[-1]}_copy"] = parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = data.draw(REPLACEMENTS)
        else:
            value = parent[path[-1]]
            parent[path[-1]] = [value] if not isinstance(value, list) else {"x": value}
    style = data.draw(st.sampled_from([None, True, False]))
    check_parse(yaml.safe_dump(tree, default_flow_style=style, sort_keys=data.draw(st.booleans())))


# --- deep nesting and odd numbers ---------------------------------------------------------------

NESTINGS: dict[str, Callable[[int], str]] = {
    "flow lists": lambda n: "[" * n + "]" * n,
    "flow maps": lambda n: "{a: " * n + "1" + "}" * n,
    "unclosed flow": lambda n: "tenants: " + "[{" * n,
    "block lists": lambda n: "\n".join(" " * i + "-" for i in range(n)),
    "block maps": lambda n: "\n".join(" " * i + "a:" for i in range(n)),
    "compact lists": lambda n: "- " * n + "x",
    "anchored chain": lambda n: "\n".join(["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, n)]),
    "merge chain": lambda n: (
        "x: [[&a0 {k: 0}, " + ", ".join(f"&a{i} {{<<: *a{i - 1}}}" for i in range(1, n)) + f"]]\ny: {{<<: *a{n - 1}}}"
    ),
}


@settings(FUZZ, max_examples=max(20, EXAMPLES // 5))
@given(st.sampled_from(sorted(NESTINGS)), st.integers(MAX_DEPTH - 3, 20_000))
def test_property_deep_nesting(shape: str, depth: int) -> None:
    check_parse(NESTINGS[shape](depth))


INTEGER_TEXT = (
    r"[-+]?(0x[0-9a-fA-F_]{0,200}|0o?[0-7_]{0,200}|0b[01_]{0,300}|[0-9_]{0,200}|[0-9]{1,3}(:[0-5]?[0-9]){0,60})"
)
FLOAT_TEXT = r"[-+]?([0-9_]{0,50}\.?[0-9_]{0,50}([eE][-+]?[0-9]{0,500})?|\.inf|\.nan|\.Inf|\.NaN)"
DATE_TEXT = r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
TIME_TEXT = r"([Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?( ?(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?)?"
numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.from_regex(INTEGER_TEXT, fullmatch=True),
    st.from_regex(FLOAT_TEXT, fullmatch=True),
    st.from_regex(DATE_TEXT + TIME_TEXT, fullmatch=True),
)
number_fields = st.sampled_from(
    [
        "version",
        "defaults.limits.max_connections",
        "defaults.limits.header_timeout",
        "daemon.drain_timeout",
        "mtu",
        "key",
    ]
)


@FUZZ
@given(
    number_fields,
    st.none() | st.sampled_from(["!!int", "!!float", "!!timestamp", "!!bool", "!!str", "!!null"]),
    numbers,
)
def test_property_odd_numbers_and_tags(field: str, tag: str | None, number: str) -> None:
    value = f"{tag} {number}" if tag else number
    if field == "version":
        text = f"version: {value}\ntenants: []\n"
    elif field == "mtu":
        text = (
            "version: 1\ntenants:\n  - {name: a, listen: ['127.0.0.1:1'], upstream: 'http://a', "
            f"links: [{{name: x, mtu: {value}}}]}}\n"
        )
    elif field == "key":
        text = f"version: 1\ntenants: []\n{value}: 1\n"
    else:
        section, *rest = field.split(".")
        inner = f"{{{rest[-1]}: {value}}}"
        text = f"version: 1\n{section}: " + (f"{{limits: {inner}}}" if len(rest) == 2 else inner) + "\ntenants: []\n"
    check_parse(text)


# --- the corpus of inputs that crashed the loader ------------------------------------------------


def _merge_bomb(levels: int) -> str:
    lines = ["a0: &a0 {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1, k9: 1}"]
    lines += [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 10)}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


TENANT = "version: 1\ntenants:\n  - {name: a, listen: ['127.0.0.1:1'], upstream: 'http://a', %s}\n"
# id: (file content, "LINE:COL: $.path", a fragment of the one error)
KNOWN_BAD: dict[str, tuple[str | bytes, str, str]] = {
    "nesting 1000 (RecursionError)": ("a: " + "[" * 1000 + "]" * 1000, "1:67: $", "nests deeper than 64 levels"),
    "nesting 100000 (SIGSEGV in libyaml)": ("[" * 100_000 + "]" * 100_000, "1:65: $", "nests deeper than 64 levels"),
    "block nesting 2000": ("\n".join(" " * i + "a:" for i in range(2000)), "65:65: $", "nests deeper than 64"),
    "!!int abc (ValueError)": ("version: !!int abc\ntenants: []\n", "1:10: $.version", "'abc' is not a valid integer"),
    "!!float x (ValueError)": ("version: !!float x\ntenants: []\n", "1:10: $.version", "'x' is not a valid number"),
    "!!timestamp 2001-13-45 (ValueError)": (
        "version: 1\ntenants: !!timestamp 2001-13-45\n",
        "2:10: $.tenants",
        "month must be in 1..12",
    ),
    "plain 2001-02-30 (ValueError)": (
        TENANT % "tenant_id: 2001-02-30",
        "3:73: $.tenants[0].tenant_id",
        "day is out of range for month",
    ),
    "empty !!int (IndexError)": ("version: !!int\ntenants: []\n", "1:10: $.version", "'' is not a valid integer"),
    "!!int _ (IndexError)": ("version: !!int _\ntenants: []\n", "1:10: $.version", "'_' is not a valid integer"),
    "!!bool maybe (KeyError)": ("version: 1\ntenants: []\ndaemon: !!bool maybe\n", "3:9: $.daemon", "valid boolean"),
    "!!timestamp x (AttributeError)": ("version: !!timestamp x\ntenants: []\n", "1:10: $.version", "date or timestamp"),
    "timezone +99:00 (ValueError)": (
        "version: 2001-01-01 00:00:00 +99:00\ntenants: []\n",
        "1:10: $.version",
        "date or timestamp",
    ),
    "int of 5000 digits (ValueError)": ("version: " + "9" * 5000 + "\ntenants: []\n", "1:10: $.version", "too long"),
    "hex int of 4000 digits (repr ValueError)": (
        TENANT % ("tenant_id: 0x" + "f" * 4000),
        "3:73: $.tenants[0].tenant_id",
        "an integer of 4002 characters is too long",
    ),
    "sexagesimal int of 181 characters": ("version: 1" + ":59" * 60 + "\ntenants: []\n", "1:10: $.version", "too long"),
    "merge chain (RecursionError)": (NESTINGS["merge chain"](1500), "1:27915: $", "merge keys (<<) nest more than 64"),
    "merge bomb (MemoryError)": (_merge_bomb(9), "6:5: $", "merge keys (<<) expand to more than"),
    "alias bomb": (_alias_bomb(8), "1:5: $.a5[7]", "expands to more than"),
    "alias chain deeper than 64": (
        NESTINGS["anchored chain"](200),
        "1:5: $.a63[0][0]",
        "deeper than 64 levels (through aliases)",
    ),
    "aliased tenant with a wrong field (TypeError in the builder)": (
        "version: 1\ndefaults: {upstream: 'http://h'}\ntenants:\n  - &t {name: ~, listen: ['127.0.0.1:80']}\n  - *t\n",
        "4:15: $.tenants[0].name",
        "expected a string, got an empty value",
    ),
    "control characters in keys (a broken error line)": (
        'version: 1\ntenants: {"\\t\\r\\n": 1, "\\u2028": 2}\n',
        "2:10: $.tenants",
        "expected a list, got a mapping with keys '\\t\\r\\n', '\\u2028'",
    ),
    "recursive alias": ("version: 1\ntenants: &t [*t]\n", "2:10: $.tenants", "recursive alias"),
    "undefined alias": ("version: *v\ntenants: []\n", "1:10: $", "found undefined alias *v"),
    "duplicate anchor": ("version: &v 1\ntenants: &v []\n", "2:10: $", "duplicate anchor &v (first at line 1"),
    "python tag": ("version: !!python/object/apply:os.system [id]\n", "1:10: $", "could not determine a constructor"),
    "!!binary in a string field": (
        TENANT % "tenant_id: !!binary aGk=",
        "3:73: $.tenants[0].tenant_id",
        "expected a string, got bytes",
    ),
    "!!set where a list goes": (TENANT % "links: !!set {a}", "3:69: $.tenants[0].links", "expected a list, got set"),
    "!!omap where a mapping goes": (
        "version: 1\ndaemon: !!omap [a: 1]\ntenants: []\n",
        "2:9: $.daemon",
        "expected a mapping, got a list",
    ),
    "merge of a scalar": ("version: 1\ndaemon: {<<: 1}\ntenants: []\n", "2:14: $", "expected a mapping or list"),
    "list as a key": ("? [a]\n: 1\n", "1:3: $", "found unhashable key"),
    "mapping as a key": ("{? {a: 1} : 1}\n", "1:4: $", "found unhashable key"),
    "date as a key": (
        "version: 1\ntenants: []\n2001-01-01: 1\n",
        "3:1: $['2001-01-01']",
        "unknown field the date 2001-01-01",
    ),
    "multi-document stream": ("version: 1\ntenants: []\n---\nversion: 1\n", "3:1: $", "but found another document"),
    "NUL byte": ("version: 1\ntenants: []\n# \x00\n", "3:3: $", "U+0000 is not allowed"),
    "non-UTF-8 bytes": (
        b"version: 1\ntenants: [] # \xff\xfe\n",
        "2:15: $",
        "not UTF-8 text: byte 0xFF invalid start byte",
    ),
    "UTF-16 file": ("version: 1\ntenants: []\n".encode("utf-16"), "1:1: $", "UTF-16 text; save it as UTF-8"),
    "UTF-8 BOM then a bad version": ("\ufeffversion: 2\ntenants: []\n", "1:10: $.version", "unsupported manifest"),
    "huge key": ("version: 1\ntenants: []\n? " + "k" * 100_000 + "\n: 1\n", "3:3: $['kkkk", "unknown field 'kkkk"),
    "huge value": (TENANT % ("tenant_id: " + "x" * 1_000_000), "3:73: $.tenants[0].tenant_id", "at most 256"),
    "file over the size bound": ("#" * (MAX_BYTES + 1), "1:1: $", "larger than 16 MiB"),
}


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / (re.sub(r"\W+", "-", name).strip("-") + ".yaml")
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("name", sorted(KNOWN_BAD))
def test_known_bad_input_gives_one_clear_error(tmp_path: Path, name: str) -> None:
    content, where, fragment = KNOWN_BAD[name]
    path = _write(tmp_path, name, content)
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    check_error(info.value, str(path))
    (error,) = info.value.errors
    assert error.startswith(f"{path}:{where}"), error
    assert fragment in error, error


def test_json_objects_of_errors() -> None:
    with pytest.raises(ManifestError) as info:
        manifest.parse(TENANT % "tenant_id: ''", "t.yaml")
    assert info.value.as_dicts() == [
        {
            "file": "t.yaml",
            "line": 3,
            "column": 73,
            "path": "$.tenants[0].tenant_id",
            "message": "tenant_id is empty: expected visible ASCII characters",
        }
    ]
    assert format_path(("tenants", 0, "tenant_id")) == info.value.as_dicts()[0]["path"]


# The real CLI, in a subprocess: no SIGSEGV, no traceback, exit 1 and one error line per file.
CLI_CASES = [
    "nesting 100000 (SIGSEGV in libyaml)",
    "nesting 1000 (RecursionError)",
    "!!int abc (ValueError)",
    "int of 5000 digits (ValueError)",
    "merge chain (RecursionError)",
    "non-UTF-8 bytes",
]


def test_cli_validate_reports_the_crashing_inputs(tmp_path: Path) -> None:
    paths = [_write(tmp_path, name, KNOWN_BAD[name][0]) for name in CLI_CASES]
    run = run_cli("nsproxy", "validate", *map(str, paths))
    assert run.returncode == 1, str(run)
    lines = run.stderr.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == list(map(str, paths)), str(run)
    for line, name in zip(lines, CLI_CASES, strict=True):
        assert _LINE.fullmatch(line) and KNOWN_BAD[name][2] in line, str(run)


@pytest.mark.parametrize("name", CLI_CASES[:3])
def test_cli_apply_validate_only_reports_the_crashing_inputs(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, KNOWN_BAD[name][0])
    run = run_cli("nsproxy-apply", str(path), "--validate-only")
    assert run.returncode == 1, str(run)
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"{path}:") and _LINE.fullmatch(line) and KNOWN_BAD[name][2] in line, str(run)
