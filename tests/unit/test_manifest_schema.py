"""The JSON Schema document itself: well-formed, strict, documented, and in step with the model."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nsproxy_appliance import manifest
from nsproxy_appliance.manifest import fields
from nsproxy_appliance.model import Certificate, DaemonSettings, Limits, Link, ListenTls, Tenant, TenantTls, Upstream

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "tenants.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def subschemas(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object in the document, with a JSON-pointer-like path."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from subschemas(sub, f"{path}/{key}/{name}")
            elif key in ("items", "not", "additionalProperties") and isinstance(value, dict):
                yield from subschemas(value, f"{path}/{key}")
            elif key in ("oneOf", "anyOf", "allOf"):
                for i, sub in enumerate(value):
                    yield from subschemas(sub, f"{path}/{key}/{i}")


def test_schema_is_a_valid_2020_12_schema(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    jsonschema.Draft202012Validator.check_schema(schema)


def test_every_object_forbids_unknown_fields(schema: dict[str, Any]) -> None:
    objects = [(p, s) for p, s in subschemas(schema) if s.get("type") == "object" or "properties" in s]
    assert len(objects) >= 8
    for path, sub in objects:
        assert sub.get("additionalProperties") is False, path


def test_every_field_and_definition_has_a_description(schema: dict[str, Any]) -> None:
    count = 0
    for path, sub in subschemas(schema):
        for name, prop in sub.get("properties", {}).items():
            assert isinstance(prop.get("description"), str) and len(prop["description"]) > 10, f"{path}/{name}"
            count += 1
        for name, definition in sub.get("$defs", {}).items():
            assert definition.get("description"), f"{path}/$defs/{name}"
            assert definition.get("title"), f"{path}/$defs/{name}"
    assert count >= 30


def _resolve(schema: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in sub:
        sub = {**schema["$defs"][sub["$ref"].removeprefix("#/$defs/")], **{k: v for k, v in sub.items() if k != "$ref"}}
    return sub


def fields_of(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field (a property of some object) of the document, with its path."""
    for path, sub in subschemas(schema):
        for name, prop in sub.get("properties", {}).items():
            yield f"{path}/{name}", prop


def is_leaf(schema: dict[str, Any], prop: dict[str, Any]) -> bool:
    """A field whose value an editor can suggest: anything but a mapping of fields or a list of them."""
    resolved = _resolve(schema, prop)
    if "properties" in resolved:
        return False
    items = resolved.get("items")
    return not (isinstance(items, dict) and "properties" in _resolve(schema, items))


def test_every_leaf_field_has_examples_that_the_schema_accepts(schema: dict[str, Any]) -> None:
    leaves = [(path, prop) for path, prop in fields_of(schema) if is_leaf(schema, prop)]
    assert len(leaves) >= 25
    for path, prop in leaves:
        examples = prop.get("examples")
        assert isinstance(examples, list) and examples, f"{path} has no examples"
        validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], **prop})
        for example in examples:
            assert validator.is_valid(example), (path, example)


def test_every_default_is_accepted_by_its_field(schema: dict[str, Any]) -> None:
    with_default = [(path, prop) for path, prop in fields_of(schema) if "default" in prop]
    assert len(with_default) >= 15
    for path, prop in with_default:
        validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], **prop})
        assert validator.is_valid(prop["default"]), (path, prop["default"])


def _model_default(cls: type, name: str) -> Any:
    f = cls.__dataclass_fields__[name]
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return list(value) if isinstance(value, tuple) else value


def test_schema_defaults_are_the_model_defaults(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]
    limits = defs["limits"]["properties"]
    assert {name: limits[name].get("default") for name in limits} == dataclasses.asdict(Limits())
    daemon = defs["daemon"]["properties"]
    for f in dataclasses.fields(DaemonSettings):
        default = _model_default(DaemonSettings, f.name)
        assert daemon[f.name].get("default") == default, f.name  # None: no default in the schema either
    assert defs["defaults"]["properties"]["tenant_header"]["default"] == fields.DEFAULT_TENANT_HEADER
    assert defs["tenant"]["properties"]["links"]["default"] == _model_default(Tenant, "links")
    link = defs["link"]["properties"]
    assert link["kind"]["default"] == _model_default(Link, "kind")
    assert link["addresses"]["default"] == _model_default(Link, "addresses")
    assert "default" not in link["mtu"] and _model_default(Link, "mtu") is None  # the kernel's
    upstream_from = defs["upstream"]["oneOf"][1]["properties"]["from"]
    assert upstream_from["default"] == _model_default(Upstream, "from_ns")
    listen_tls = defs["listen_tls"]["properties"]
    for name in ("client_auth", "min_version"):
        assert listen_tls[name]["default"] == _model_default(ListenTls, name), name
    assert defs["certificate"]["properties"]["names"]["default"] == _model_default(Certificate, "names")
    tls_settings = defs["tls_settings"]["properties"]
    assert tls_settings["handshake_timeout"]["default"] == _model_default(TenantTls, "handshake_timeout")
    headers = defs["client_cert_headers"]["properties"]
    assert headers["subject"]["default"] == _model_default(TenantTls, "subject_header")
    assert headers["fingerprint"]["default"] == _model_default(TenantTls, "fingerprint_header")


def test_packaged_schema_is_the_same_file(schema: dict[str, Any]) -> None:
    link = ROOT / "nsproxy_appliance" / "tenants.schema.json"
    assert link.is_symlink() and os.readlink(link) == "../schemas/tenants.schema.json"
    assert manifest.json_schema() == schema


def test_schema_fields_match_the_model(schema: dict[str, Any]) -> None:
    limits = schema["$defs"]["limits"]["properties"]
    assert set(limits) == set(Limits.field_names())
    for f in dataclasses.fields(Limits):
        expected = "number" if f.type in ("float", float) else "integer"
        assert limits[f.name].get("type", schema["$defs"]["seconds"]["type"]) == expected, f.name
    daemon = schema["$defs"]["daemon"]["properties"]
    assert set(daemon) == {f.name for f in dataclasses.fields(DaemonSettings)}


@pytest.mark.parametrize(
    "path",
    [
        "examples/tenants.yaml",
        "examples/metadata-vip.yaml",
        "tests/unit/data/issue-example.yaml",
        "tests/unit/data/tls-example.yaml",
    ],
)
def test_schema_accepts_the_examples(schema: dict[str, Any], path: str) -> None:
    data = yaml.safe_load((ROOT / path).read_text())
    jsonschema.Draft202012Validator(schema).validate(data)


def test_modeline_of_the_issue_example_points_at_the_schema() -> None:
    path = ROOT / "tests/unit/data/issue-example.yaml"
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match and (path.parent / match.group(1)).resolve() == SCHEMA_FILE


# The schema's patterns (what editors check) and fields.py (what nsproxy checks) must agree.
PATTERN_SAMPLES = {
    "tenant_name": (fields.tenant_name, ["a", "acme-1", "0", "a" * 63, "a" * 64, "-a", "a-", "A", "a_b", "", "é"]),
    "tenant_id": (fields.tenant_id, ["x", "a b", " a", "a ", "a\tb", "a\r\nb", "~!", "é", "", "x" * 257]),
    "netns_name": (fields.netns_name, ["a", "acme-prod", ".", "..", "...", "a/b", "a b", "a" * 64, "a" * 65, ""]),
    "listen": (fields.listen, ["127.0.0.1:80", "[::1]:80", "[fd00::1]:65535"]),
    "cidr": (fields.cidr, ["10.0.0.5/24", "fd00::1/128", "0.0.0.0/0"]),
    "dns_name": (
        fields.dns_name,
        ["a", "api.acme.test", "*.acme.test", "a.b.", "*", "*.", "a..b", "a*b.c", "-a.b", ""],
    ),
    "header_name": (fields.header_name, ["X-Client-Cert", "X_A", "X A", "", "a:b"]),  # reserved names: the builder
}


@pytest.mark.parametrize("definition", sorted(PATTERN_SAMPLES))
def test_schema_patterns_agree_with_the_field_parsers(schema: dict[str, Any], definition: str) -> None:
    parser, samples = PATTERN_SAMPLES[definition]
    validator = jsonschema.Draft202012Validator(schema["$defs"][definition])
    for sample in samples:
        try:
            parser(sample)
            accepted = True
        except fields.FieldError:
            accepted = False
        assert validator.is_valid(sample) == accepted, (definition, sample)
