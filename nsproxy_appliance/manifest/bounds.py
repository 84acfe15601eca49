"""How big and how deep a manifest may be: bounds far above any real manifest, checked before
anything large is built, so hostile input gets an error instead of a crash, a hang or the OOM killer.

A real manifest nests 7 levels deep (tenants → [i] → links → [j] → addresses → [k]) and has about
20 YAML nodes per tenant: 10,000 tenants are ~1.6 MB and ~200,000 nodes.
"""

from __future__ import annotations

MAX_BYTES = 16 * 1024 * 1024  # file size (parse(): characters); 10x a 10,000-tenant manifest
MAX_DEPTH = 64  # nesting of mappings/lists, counted after aliases and merge keys too
MAX_NODES = 1_000_000  # YAML nodes, as written and as expanded by aliases and merge keys (~600 MB of memory)
MAX_INT_CHARS = 100  # longer integers are refused: no value needs them, and Python limits int() of 4300 digits


class LimitExceeded(Exception):
    """The input is over one of the bounds; line and column are 1-based."""

    def __init__(self, line: int, column: int, message: str):
        super().__init__(message)
        self.line, self.column, self.message = line, column, message
