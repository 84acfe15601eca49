"""nsproxy: one host process serving an HTTP endpoint inside every tenant's network namespace.

The version has one source, the package metadata (pyproject.toml's `version`, as installed):
`__version__` and `version_line()` read it. It is looked up on first use, not at import, so
commands that never print it (the applier's hot path, the daemon's start-up) don't pay for it.
"""

from __future__ import annotations

import functools
import platform

DISTRIBUTION = "nsproxy-appliance"
UNKNOWN_VERSION = "0+unknown"  # running from a source tree that was never installed


@functools.cache
def version() -> str:
    """The installed distribution's version, e.g. "0.1.0"."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def version_line(prog: str) -> str:
    """What `PROG --version` prints: "nsproxy 0.1.0 (Python 3.11.7)"."""
    return f"{prog} {version()} (Python {platform.python_version()})"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
