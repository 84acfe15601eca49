"""The tenant manifest: YAML → model.Manifest, with every error reported at once.

    manifest.load("tenants.yaml") -> Manifest       raises ManifestError
    manifest.read(sys.stdin.buffer, "<stdin>") -> Manifest
    manifest.parse(text, "tenants.yaml") -> Manifest

Each error reads `FILE:LINE:COL: $.json.path: message` (ManifestError.as_dicts() gives them as
JSON objects). Steps: YAML with positions and duplicate keys (yamlsource), JSON Schema with human
messages (validation), then the checks a schema cannot express and the model (build). Any input
gives a Manifest or ManifestError, never another exception: sizes are bounded (bounds.py). No
kernel, no root: usable in GitOps CI. `check_files=True` (plan and apply) also checks the TLS files
the manifest names (tlsfiles.py); what does not make it invalid (a certificate expiring soon) is in
Manifest.warnings, in the same format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Iterator
from typing import BinaryIO

from ..model import Manifest
from . import build, tlsfiles, validation
from .bounds import MAX_BYTES, MAX_DEPTH, MAX_NODES
from .problems import ManifestError, Problem, format_path
from .yamlsource import YamlError
from .yamlsource import load as _load_yaml

json_schema = validation.schema  # the JSON Schema document (dict)

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "ManifestError",
    "Problem",
    "format_path",
    "json_schema",
    "load",
    "parse",
    "read",
]

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def load(
    path: str | os.PathLike[str], *, check_files: bool = False, reader: tlsfiles.DaemonUser | None = None
) -> Manifest:
    """Read and validate the manifest at `path` (at most MAX_BYTES, UTF-8); `check_files`: also the
    TLS files it names (plan and apply do, `nsproxy validate` does not), and that `reader`, the
    daemon's user, can read them."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")  # noqa: SIM115  # closed below; open's errors are told apart from read's
    except OSError as e:
        raise ManifestError(path, [Problem(1, 1, (), f"cannot read the manifest: {e.strerror or e}")]) from None
    with f:
        return read(f, path, check_files=check_files, reader=reader)


def read(
    stream: BinaryIO, filename: str, *, check_files: bool = False, reader: tlsfiles.DaemonUser | None = None
) -> Manifest:
    """Read and validate a manifest from a binary stream (standard input: `nsproxy validate -`);
    `filename` names it in errors, e.g. "<stdin>"."""
    try:
        data = stream.read(MAX_BYTES + 1)  # bounded: /dev/zero or a runaway file is refused, not read
    except OSError as e:
        raise ManifestError(filename, [Problem(1, 1, (), f"cannot read the manifest: {e.strerror or e}")]) from None
    if len(data) > MAX_BYTES:
        raise ManifestError(filename, [Problem(1, 1, (), f"the manifest is larger than {_mib(MAX_BYTES)}")])
    return parse(_decode(filename, data), filename, check_files=check_files, reader=reader)


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")  # a UTF-8 byte order mark is kept: YAML skips it
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        if data.startswith(_UTF16_BOMS):
            message = "the manifest is UTF-16 text; save it as UTF-8"
        else:
            message = f"the manifest is not UTF-8 text: byte 0x{data[e.start]:02X} {e.reason}"
        raise ManifestError(path, [Problem(line, column, (), message)]) from None


def _mib(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB"


def parse(
    text: str, filename: str = "<memory>", *, check_files: bool = False, reader: tlsfiles.DaemonUser | None = None
) -> Manifest:
    """Validate manifest `text`; `filename` is used in error messages and as Manifest.source.

    Raises ManifestError, and nothing else, for any text.
    """
    if len(text) > MAX_BYTES:
        raise ManifestError(filename, [Problem(1, 1, (), f"the manifest is larger than {_mib(MAX_BYTES)}")])
    try:
        with _gc_paused():
            return _parse(text, filename, check_files, reader)
    except ManifestError:
        raise
    except Exception as e:  # a bug in nsproxy: still an error message, never a traceback
        message = f"internal error while checking the manifest ({type(e).__name__}); please report this manifest"
        raise ManifestError(filename, [Problem(1, 1, (), message)]) from e


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading builds one large graph of live objects and no garbage cycles: the cyclic collector
    would only rescan that graph, over and over (half of the load time of 10,000 tenants)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse(text: str, filename: str, check_files: bool, reader: tlsfiles.DaemonUser | None) -> Manifest:
    try:
        source, problems = _load_yaml(text)
    except YamlError as e:
        raise ManifestError(filename, e.problems) from None
    schema_problems = validation.validate(source)
    builder = build.Builder(source, schema_problems, tlsfiles.FileChecker(reader=reader) if check_files else None)
    manifest = builder.build()
    problems += schema_problems + builder.problems
    if problems or manifest is None:
        raise ManifestError(filename, problems or [Problem(1, 1, (), "invalid manifest")])
    # ManifestError orders and formats problems: warnings are formatted the same way
    warnings = ManifestError(filename, builder.warnings).errors if builder.warnings else []
    return dataclasses.replace(manifest, source=filename, warnings=tuple(warnings))
