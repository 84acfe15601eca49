"""Errors found in a manifest: where (line, column, JSON path) and what."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

JsonPath = tuple[str | int, ...]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(path: Iterable[str | int]) -> str:
    """('tenants', 1, 'listen', 0) → '$.tenants[1].listen[0]'."""
    out = "$"
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{str(part)!r}]"
    return out


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based
    column: int  # 1-based
    path: JsonPath
    message: str

    def format(self, filename: str) -> str:
        return f"{filename}:{self.line}:{self.column}: {format_path(self.path)}: {self.message}"


class ManifestError(ValueError):
    """The manifest is invalid. `.errors` holds every error as 'FILE:LINE:COL: $.path: message'."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        self.errors = [p.format(filename) for p in self.problems]
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)
