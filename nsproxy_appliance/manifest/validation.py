"""JSON Schema validation with human messages.

jsonschema's raw messages ("... is not valid under any of the given schemas") do not say what
to write instead. Here every error is turned into "what is wrong, what is expected", placed on
the offending YAML node; string fields with a parser in fields.py are explained by that parser.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from . import fields
from .problems import JsonPath, Problem
from .yamlsource import Source

SCHEMA_RESOURCE = "tenants.schema.json"

# $defs whose values fields.py can explain precisely (a pattern error alone says little).
_EXPLAINERS: dict[str, Callable[[str], object]] = {
    "tenant_name": fields.tenant_name,
    "netns_name": fields.netns_name,
    "absolute_path": fields.absolute_path,
    "link_name": fields.link_name,
    "cidr": fields.cidr,
    "listen": fields.listen,
    "upstream_url": fields.upstream_url,
    "tenant_header": fields.tenant_header,
    "tenant_id": fields.tenant_id,
    "header_name": fields.header_name,
    "dns_name": fields.dns_name,
}

# What a oneOf expects, when the value fits none of its forms.
_EXPECTED_FORMS = {
    "upstream": (
        'expected an upstream: a URL string "http(s)://HOST:PORT", {url: "http(s)://HOST:PORT", from: host|tenant, '
        "tls: {...}}, or {unix: /path/to.sock}"
    ),
    "netns": "expected a netns name (a string such as acme-prod) or {path: /absolute/path/of/the/netns}",
    "listener": 'expected a listen address "IPv4:PORT" / "[IPv6]:PORT", or {address: "IPv4:PORT", tls: {...}}',
    "access_log": 'expected "stdout", "off" or an absolute file path',
}

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "an empty value",
}


@functools.cache
def schema() -> dict[str, Any]:
    """The manifest JSON Schema shipped with the package (schemas/tenants.schema.json)."""
    text = resources.files("nsproxy_appliance").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


@functools.cache
def _def_names() -> dict[int, str]:
    return {id(sub): name for name, sub in schema()["$defs"].items()}


def validate(source: Source) -> list[Problem]:
    """Every schema error, at every path (an aliased node that is wrong is wrong at each of its
    paths: the builder must skip them all); ManifestError merges those at one place in the text."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(source.data):
        problems.extend(_humanise(error, source))
    return problems


def _humanise(error: ValidationError, source: Source) -> Iterator[Problem]:
    path: JsonPath = tuple(error.absolute_path)
    instance = error.instance
    kind = error.validator

    def at(message: str, where: JsonPath = path, *, key: bool = False) -> Problem:
        line, column = source.position(where, key=key)
        return Problem(line, column, where, message)

    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        for extra in instance:
            if extra not in allowed:
                what = repr(extra) if isinstance(extra, str) else _describe(extra)
                yield at(f"unknown field {what}; expected one of: {', '.join(allowed)}", (*path, extra), key=True)
    elif kind == "required" and isinstance(instance, dict):
        for name in error.validator_value:
            if name not in instance:
                yield at(f"missing required field {name!r}")
    elif kind in ("oneOf", "anyOf"):
        yield from _humanise_one_of(error, source, at)
    elif kind == "type":
        expected = error.validator_value
        expected = [expected] if isinstance(expected, str) else expected
        wanted = " or ".join(_JSON_TYPES.get(t, t) for t in expected)
        hint = "; quote it" if "string" in expected and _is_scalar(instance) else ""
        yield at(f"expected {wanted}, got {_describe(instance)}{hint}")
    elif kind == "const":
        if path == ("version",):
            yield at(f"unsupported manifest version {instance!r}: this nsproxy reads version {error.validator_value}")
        else:
            yield at(f"expected {error.validator_value!r}, got {_describe(instance)}")
    elif kind == "enum":
        choices = ", ".join(dict.fromkeys(str(v) for v in error.validator_value))  # min_version: "1.3" and 1.3
        yield at(f"expected one of: {choices}; got {_describe(instance)}")
    elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        yield at(f"{_field(path)} must be {op} {error.validator_value}, got {instance!r}")
    elif kind == "minItems" and path and path[-1] == "listen":
        yield at('a tenant needs at least one listen address, e.g. listen: ["127.0.0.1:8080"]')
    elif kind == "minItems":
        yield at(f"expected at least {error.validator_value} entries")
    else:
        yield at(_explain(error) or _field_prefixed(path, error.message))


def _humanise_one_of(error: ValidationError, source: Source, at: Callable[..., Problem]) -> Iterator[Problem]:
    """Report the errors of the one form the value was clearly meant to be, else list the forms."""
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
    # A branch fits the shape when the value has its type and the keys it requires.
    fitting = [
        errors
        for errors in by_branch.values()
        if not any(e.validator in ("type", "required", "const", "enum") and not e.relative_path for e in errors)
    ]
    if len(fitting) == 1:
        for sub in fitting[0]:
            yield from _humanise(sub, source)
        return
    name = _def_names().get(id(error.schema), "")
    yield at(_EXPECTED_FORMS.get(name, error.message) + f"; got {_describe(error.instance)}")


def _explain(error: ValidationError) -> str | None:
    """Ask fields.py why a string failed its pattern/length, for the $defs it knows."""
    if not isinstance(error.instance, str):
        return None
    name = _def_names().get(id(error.schema))
    explainer = _EXPLAINERS.get(name or "")
    if explainer is None:
        if error.validator == "pattern" and error.absolute_path and error.absolute_path[-1] == "access_log":
            explainer = fields.access_log
        else:
            return None
    try:
        explainer(error.instance)
    except fields.FieldError as e:
        return str(e)
    return None


def _field(path: JsonPath) -> str:
    return str(path[-1]) if path and isinstance(path[-1], str) else "value"


def _field_prefixed(path: JsonPath, message: str) -> str:
    return f"{_field(path)}: {message}" if path and isinstance(path[-1], str) else message


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, str):
        return f"{value!r}"
    if isinstance(value, dict):
        return "a mapping" + (f" with keys {', '.join(map(_key, value))}" if value else " (empty)")
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _key(key: Any) -> str:
    """A mapping key as a message shows it: bare when it is a plain word, else quoted."""
    text = str(key)
    if len(text) > 80:
        return repr(text[:80]) + "…"
    return text if text and text.isprintable() and text.strip() == text else repr(text)
