"""`--version` for every console script (nsproxy, nsproxy-apply, nsproxyd, nsproxy-broker,
nsproxy-reconcile): one argparse option."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import version_line


class _Version(argparse.Action):
    """Prints version_line(PROG) and exits 0; the version is looked up only when asked for, so
    commands that never print it (the applier's hot path, the daemon's start-up) don't pay for it."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        sys.stdout.write(version_line(parser.prog) + "\n")  # stdout, as argparse's own "version" action
        parser.exit(0)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_Version, help="print the version and exit")
