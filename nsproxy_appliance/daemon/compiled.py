"""Which data-plane modules are compiled with mypyc, and whether the compiled ones are current.

The request path (parsing, rewriting, framing, the protocols) is plain typed Python that setup.py
compiles with mypyc when the package is built: the same source, about twice as fast per request
(docs/performance.md). NSPROXY_PURE_PYTHON=1 at build time skips it. This module imports nothing of
the package, so setup.py can read the list before the package exists.
"""

from __future__ import annotations

import glob
import importlib.machinery
import os

COMPILED_MODULES = (
    "context",
    "fdbudget",
    "flow_control",
    "framing",
    "http",
    "lazytimer",
    "request_head",
    "response_head",
    "tunnel",
    "upstream",
)
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def is_compiled() -> bool:
    """Whether the data plane in use is the compiled one."""
    from . import http

    return not (http.__file__ or "").endswith(".py")


def stale_modules(package_dir: str = PACKAGE_DIR) -> list[str]:
    """Compiled modules older than their source in a checkout (an editable install after an edit):
    Python would import the stale extension, not the edited source. Empty in a wheel install."""
    stale = []
    for name in COMPILED_MODULES:
        source = os.path.join(package_dir, f"{name}.py")
        built = [
            path
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
            for path in glob.glob(os.path.join(package_dir, f"{name}{suffix}"))
        ]
        if built and os.path.getmtime(source) > max(os.path.getmtime(path) for path in built):
            stale.append(name)
    return stale


def main() -> int:
    """`python -m nsproxy_appliance.daemon.compiled --check`: exit 1 when the compiled data plane is
    stale, or missing though NSPROXY_PURE_PYTHON is not set (scripts/setup.sh rebuilds then)."""
    import sys

    stale = stale_modules()
    if stale:
        print(f"compiled data plane is older than its source: {', '.join(stale)}", file=sys.stderr)
        return 1
    if not is_compiled() and os.environ.get("NSPROXY_PURE_PYTHON") != "1":
        print("the data plane is not compiled (set NSPROXY_PURE_PYTHON=1 to run it as Python)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
