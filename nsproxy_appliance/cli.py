"""Command line: `nsproxy-apply MANIFEST [...]` and `nsproxy validate|plan|apply|status|stop|schema`.

Exit codes: 0 success / in sync; 1 error (bad manifest, conflict, failed action, a tenant not
served, lock timeout); 2 changes pending (only with --check: terraform's -detailed-exitcode
contract). `nsproxy status` exits 1 when a tenant of the manifest is not served. A MANIFEST of
`-` is read from standard input (named `<stdin>` in errors).

Validation needs neither root nor the kernel: that path never imports pyroute2 (apply.py and
kernel/ are imported only once a run needs them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import NsproxyError, UserError
from .exitcodes import EXIT_ERROR, EXIT_OK
from .paths import DAEMON_TIMEOUT, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, LOCK_TIMEOUT, STOP_TIMEOUT, Paths
from .versionarg import add_version

if TYPE_CHECKING:
    from .manifest.tlsfiles import DaemonUser

__all__ = ["UserError", "apply_main", "main"]

STDIN = "-"  # a MANIFEST argument that means standard input
STDIN_NAME = "<stdin>"  # how errors and reports name it


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means "changes pending", so usage errors are 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


# -- argument parsing --------------------------------------------------------------------------------


def _add_dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=os.environ.get("NSPROXY_STATE_DIR", DEFAULT_STATE_DIR),
        help="ledger and apply lock (default: $NSPROXY_STATE_DIR or %(default)s)",
    )
    p.add_argument(
        "--runtime-dir",
        metavar="DIR",
        default=os.environ.get("NSPROXY_RUNTIME_DIR", DEFAULT_RUNTIME_DIR),
        help="daemon config, pidfile, admin socket (default: $NSPROXY_RUNTIME_DIR or %(default)s)",
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", choices=("text", "json"), default="text", help="output format (default: text)")


def _add_apply_options(p: argparse.ArgumentParser, *, with_check: bool) -> None:
    p.add_argument("manifest", metavar="MANIFEST", help="the tenant manifest (YAML; - reads standard input)")
    if with_check:
        p.add_argument("--check", action="store_true", help="print the plan, change nothing (exit 2: changes pending)")
    p.add_argument("--diff", action="store_true", help="also show before/after per tenant")
    _add_output(p)
    p.add_argument("--allow-empty", action="store_true", help="accept a manifest without tenants (prunes all)")
    p.add_argument("--force", action="store_true", help="prune namespaces even while processes run inside them")
    p.add_argument("--no-daemon", action="store_true", help="write the runtime config but neither launch nor reload")
    _add_dirs(p)
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=LOCK_TIMEOUT,
        metavar="SEC",
        help="wait this long for another apply (%(default)g)",
    )
    p.add_argument(
        "--daemon-timeout",
        type=float,
        default=DAEMON_TIMEOUT,
        metavar="SEC",
        help="wait this long for the daemon to serve the new config (%(default)g; a reload also allows the drain "
        "timeout)",
    )
    if with_check:
        p.add_argument("--validate-only", action="store_true", help="only validate the manifest (no root, no kernel)")


def _apply_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nsproxy-apply",
        description="Make kernel state (namespaces, links, addresses) and the nsproxy daemon match MANIFEST.",
        epilog="Exit codes: 0 success or in sync, 1 error, 2 changes pending (--check only).",
    )
    add_version(p)
    _add_apply_options(p, with_check=True)
    return p


def _main_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nsproxy", description="nsproxy: an HTTP endpoint in every tenant's netns.")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="validate manifests (no root, no kernel; for GitOps CI)")
    v.add_argument("manifests", metavar="MANIFEST", nargs="+", help="manifest files; - reads standard input")
    _add_output(v)
    sub.add_parser(
        "schema",
        help="print the manifest's JSON Schema (for editors and config repositories)",
        description="Print the JSON Schema this nsproxy validates manifests against, exactly as shipped "
        "(schemas/tenants.schema.json).",
    )
    plan = sub.add_parser("plan", help="show what apply would change (same as nsproxy-apply --check)")
    _add_apply_options(plan, with_check=False)
    apply = sub.add_parser("apply", help="apply a manifest (same as nsproxy-apply)")
    _add_apply_options(apply, with_check=False)
    status = sub.add_parser(
        "status",
        help="whether every tenant is served (exit 1 if not), what nsproxy owns, the daemon",
        description="List every tenant with its state, listeners, namespace identity and last error; exit 0 "
        "only when every one is served. The tenants are those of MANIFEST, else those of the last apply.",
    )
    stop = sub.add_parser("stop", help="stop the daemon: SIGTERM (it drains), SIGKILL after --timeout")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT, metavar="SEC", help="(default %(default)g)")
    stop.add_argument(
        "--keep-listeners",
        action="store_true",
        help="leave the socket broker running with the listening sockets (a restart: connections wait in "
        "their backlog for the next daemon instead of being refused)",
    )
    _add_dirs(stop)
    status.add_argument(
        "--manifest", metavar="MANIFEST", help="check the tenants of this manifest (default: the last apply's)"
    )
    _add_output(status)
    _add_dirs(status)
    return p


# -- entry points ----------------------------------------------------------------------------------


def apply_main(argv: Sequence[str] | None = None) -> int:
    args = _apply_parser().parse_args(argv)
    if args.validate_only:
        return _validate([args.manifest], args.output)
    return _apply(args, check=args.check)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _main_parser()
    args = parser.parse_args(argv)
    if args.command == "validate":
        if args.manifests.count(STDIN) > 1:
            parser.error("standard input (-) can be validated only once")
        return _validate(args.manifests, args.output)
    if args.command == "schema":
        return _schema()
    if args.command == "plan":
        return _apply(args, check=True)
    if args.command == "apply":
        return _apply(args, check=False)
    if args.command == "stop":
        return _stop(args)
    return _status(args)


# -- commands --------------------------------------------------------------------------------------


def _load(path: str, *, check_files: bool = False, reader: DaemonUser | None = None) -> Any:
    """The Manifest at `path`, or from standard input for "-"; raises manifest.ManifestError.
    `check_files`: also the TLS files it names (plan and apply; `validate` checks the manifest only),
    and that `reader` (the daemon's user, daemon_user.py) can read them."""
    from . import manifest

    if path == STDIN:
        if sys.stdin is None:  # started with fd 0 closed
            raise manifest.ManifestError(STDIN_NAME, [manifest.Problem(1, 1, (), "standard input is closed")])
        return manifest.read(sys.stdin.buffer, STDIN_NAME, check_files=check_files, reader=reader)
    return manifest.load(path, check_files=check_files, reader=reader)


def _validate(manifests: list[str], output: str) -> int:
    from . import manifest

    reports: list[dict[str, Any]] = []
    for path in manifests:
        name = STDIN_NAME if path == STDIN else path
        try:
            m = _load(path)
        except manifest.ManifestError as e:
            # "errors" stays the list of strings it always was; "problems" has the same errors, in
            # the same order, as objects {file, line, column, path, message} (CI annotations).
            reports.append(
                {"manifest": name, "valid": False, "errors": list(e.errors), "problems": e.as_dicts(), "tenants": 0}
            )
        else:
            reports.append({"manifest": name, "valid": True, "errors": [], "problems": [], "tenants": len(m.tenants)})
    ok = all(r["valid"] for r in reports)
    if output == "json":
        _print_json({"valid": ok, "manifests": reports})
    else:
        for r in reports:
            if r["valid"]:
                print(f"{r['manifest']}: valid ({r['tenants']} tenant{'s' if r['tenants'] != 1 else ''})")
            else:
                for error in r["errors"]:
                    print(error, file=sys.stderr)
    return EXIT_OK if ok else EXIT_ERROR


def _schema() -> int:
    from importlib import resources

    from .manifest.validation import SCHEMA_RESOURCE

    # Byte for byte what ships, so `nsproxy schema | diff - schemas/tenants.schema.json` is empty.
    sys.stdout.write(resources.files("nsproxy_appliance").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))
    return EXIT_OK


def _apply(args: argparse.Namespace, *, check: bool) -> int:
    from . import manifest
    from .daemon_user import daemon_user

    reader = None if args.no_daemon else daemon_user(_paths(args))
    try:
        m = _load(args.manifest, check_files=True, reader=reader)
    except manifest.ManifestError as e:
        return _fail(args.output, list(e.errors), "the manifest is invalid; nothing was changed", e.as_dicts())
    try:
        if os.geteuid() != 0:
            raise UserError(
                "nsproxy-apply needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to observe and change network "
                "namespaces; use --validate-only (or `nsproxy validate`) to only check the manifest"
            )
        result = _run(m, args, check)
    except UserError as e:
        return _fail(args.output, [str(e)])
    from . import plan_render

    if args.output == "json":
        sys.stdout.write(plan_render.to_json_text(result, args.diff))
    else:
        sys.stdout.write(plan_render.to_text(result, args.diff))
    return result.exit_code


def _run(m: Any, args: argparse.Namespace, check: bool) -> Any:
    """Run the applier, turning every expected failure into a UserError with a clear message."""
    from . import apply
    from .plan import PlanOptions

    options = apply.RunOptions(
        plan=PlanOptions(
            paths=_paths(args),
            no_daemon=args.no_daemon,
            force=args.force,
            allow_empty=args.allow_empty,
        ),
        check=check,
        lock_timeout=args.lock_timeout,
        daemon_timeout=args.daemon_timeout,
        diff=args.diff,
    )
    try:
        return apply.run(m, options)
    except NsproxyError as e:
        raise UserError(str(e)) from None
    except PermissionError as e:
        raise UserError(f"permission denied: {e.filename or ''} {e.strerror or e}".strip()) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise UserError(f"{where}{e.strerror or e}") from None


def _status(args: argparse.Namespace) -> int:
    from . import status

    m = None
    if args.manifest:
        from . import manifest

        try:
            m = _load(args.manifest)
        except manifest.ManifestError as e:
            return _fail(args.output, list(e.errors), "the manifest is invalid", e.as_dicts())
    try:
        report, code = status.collect(_paths(args), m)
    except NsproxyError as e:
        return _fail(args.output, [str(e)])
    if args.output == "json":
        _print_json(report)
    else:
        sys.stdout.write(status.to_text(report))
    return code


def _stop(args: argparse.Namespace) -> int:
    from . import broker_control, daemon_control

    paths = _paths(args)
    current = daemon_control.status(paths)
    # a broker outlives a daemon that died or never started: without --keep-listeners it goes too
    broker = None if args.keep_listeners else broker_control.running_pid(paths)
    stopped = daemon_control.stop(paths, timeout=args.timeout, keep_broker=args.keep_listeners)
    if not current.running:
        print(f"nsproxyd is not running ({paths.pidfile})")
        if broker is not None:
            print(f"nsproxy-broker (pid {broker}) {'stopped' if stopped else 'killed'}")
    elif stopped:
        print(f"nsproxyd (pid {current.pid}) stopped")
    else:
        print(f"nsproxyd (pid {current.pid}) did not exit within {args.timeout:g} s after SIGTERM: killed")
    return EXIT_OK


# -- output helpers --------------------------------------------------------------------------------


def _paths(args: argparse.Namespace) -> Paths:
    return Paths(state_dir=args.state_dir, runtime_dir=args.runtime_dir)


def _fail(output: str, errors: list[str], note: str | None = None, problems: list[dict[str, Any]] | None = None) -> int:
    """Report errors that stopped a command; `problems`: an invalid manifest's errors as objects."""
    if output == "json":
        from .plan_render import failure_report

        report = failure_report(errors)
        if problems is not None:
            report["problems"] = problems
        _print_json(report)
    else:
        for error in errors:
            print(error if note else f"nsproxy: error: {error}", file=sys.stderr)
        if note:
            print(f"nsproxy: {note}", file=sys.stderr)
    return EXIT_ERROR


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(apply_main())
