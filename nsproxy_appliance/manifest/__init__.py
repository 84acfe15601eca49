"""The tenant manifest: YAML → model.Manifest, with every error reported at once.

    manifest.load("tenants.yaml") -> Manifest       raises ManifestError
    manifest.parse(text, "tenants.yaml") -> Manifest

Each error reads `FILE:LINE:COL: $.json.path: message`. Steps: YAML with positions and
duplicate keys (yamlsource), JSON Schema with human messages (validation), then the checks a
schema cannot express and the model (build). No kernel, no root: usable in GitOps CI.
"""

from __future__ import annotations

import dataclasses
import os

from ..model import Manifest
from . import build, validation
from .problems import ManifestError, Problem, format_path
from .yamlsource import YamlError
from .yamlsource import load as _load_yaml

json_schema = validation.schema  # the JSON Schema document (dict)

__all__ = ["ManifestError", "Problem", "format_path", "json_schema", "load", "parse"]


def load(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest at `path`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ManifestError(path, [Problem(1, 1, (), f"cannot read the manifest: {reason}")]) from None
    return parse(text, path)


def parse(text: str, filename: str = "<memory>") -> Manifest:
    """Validate manifest `text`; `filename` is used in error messages and as Manifest.source."""
    try:
        source, problems = _load_yaml(text)
    except YamlError as e:
        raise ManifestError(filename, e.problems) from None
    schema_problems = validation.validate(source)
    builder = build.Builder(source, schema_problems)
    manifest = builder.build()
    problems += schema_problems + builder.problems
    if problems or manifest is None:
        raise ManifestError(filename, problems or [Problem(1, 1, (), "invalid manifest")])
    return dataclasses.replace(manifest, source=filename)
