"""Errors found in a manifest: where (line, column, JSON path) and what."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import NsproxyError

JsonPath = tuple[str | int, ...]
MAX_MESSAGE_CHARS = 1000  # a message quoting a huge value would be unreadable
# What would break an error line (str.splitlines() splits on some of these) or a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
MAX_KEY_CHARS = 80  # longer keys are cut in paths


def format_path(path: Iterable[str | int]) -> str:
    """('tenants', 1, 'listen', 0) → '$.tenants[1].listen[0]'."""
    out = "$"
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and len(part) <= MAX_KEY_CHARS and _IDENTIFIER.fullmatch(part):
            out += f".{part}"
        else:
            text = str(part)
            out += f"[{text!r}]" if len(text) <= MAX_KEY_CHARS else f"[{text[:MAX_KEY_CHARS]!r}…]"
    return out


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based
    column: int  # 1-based
    path: JsonPath
    message: str

    def format(self, filename: str) -> str:
        return f"{filename}:{self.line}:{self.column}: {format_path(self.path)}: {self.message}"

    def as_dict(self, filename: str) -> dict[str, Any]:
        """The JSON form: {"file", "line", "column", "path": "$.tenants[0].listen", "message"}."""
        return {
            "file": filename,
            "line": self.line,
            "column": self.column,
            "path": format_path(self.path),
            "message": self.message,
        }

    def one_line(self) -> Problem:
        """The message as one readable line: control characters escaped, a huge value cut."""
        message = _CONTROL.sub(lambda m: repr(m.group())[1:-1], self.message)
        if len(message) > MAX_MESSAGE_CHARS:
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]}… ({cut} more characters)"
        return self if message == self.message else replace(self, message=message)


class ManifestError(NsproxyError, ValueError):
    """The manifest is invalid. `.errors` holds every error as 'FILE:LINE:COL: $.path: message';
    `.as_dicts()` the same errors, in the same order, as JSON objects."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(_one_per_place(p.one_line() for p in problems), key=lambda p: (p.line, p.column))
        self.errors = [p.format(filename) for p in self.problems]
        super().__init__("\n".join(self.errors))

    def as_dicts(self) -> list[dict[str, Any]]:
        """[{"file", "line", "column", "path", "message"}, ...], e.g. for `nsproxy validate --output json`."""
        return [p.as_dict(self.filename) for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.errors)


def _one_per_place(problems: Iterable[Problem]) -> list[Problem]:
    """One of several equal messages at one place: a node reached through aliases (or several
    schema branches) is reported once, at its first path."""
    seen: set[tuple[int, int, str]] = set()
    out = []
    for p in problems:
        key = (p.line, p.column, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
