"""Command line: `nsproxy-apply MANIFEST [...]` and `nsproxy validate|plan|apply|status`.

Exit codes: 0 success / in sync; 1 error (bad manifest, conflict, failed action, lock timeout);
2 changes pending (only with --check: terraform's -detailed-exitcode contract).

Validation needs neither root nor the kernel: that path never imports pyroute2 (apply.py and
kernel/ are imported only once a run needs them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .exitcodes import EXIT_ERROR, EXIT_OK
from .runtime_config import Paths

DEFAULT_STATE_DIR = Paths.state_dir  # the defaults live once, on Paths
DEFAULT_RUNTIME_DIR = Paths.runtime_dir


class UserError(Exception):
    """An error to report in one clear message, without a traceback."""


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
    p.add_argument("manifest", metavar="MANIFEST", help="the tenant manifest (YAML)")
    if with_check:
        p.add_argument("--check", action="store_true", help="print the plan, change nothing (exit 2: changes pending)")
    p.add_argument("--diff", action="store_true", help="also show before/after per tenant")
    _add_output(p)
    p.add_argument("--allow-empty", action="store_true", help="accept a manifest without tenants (prunes all)")
    p.add_argument("--force", action="store_true", help="prune namespaces even while processes run inside them")
    p.add_argument("--no-daemon", action="store_true", help="write the runtime config but neither launch nor reload")
    _add_dirs(p)
    p.add_argument(
        "--lock-timeout", type=float, default=30.0, metavar="SEC", help="wait this long for another apply (30)"
    )
    p.add_argument(
        "--daemon-timeout",
        type=float,
        default=30.0,
        metavar="SEC",
        help="wait this long for the daemon to serve the new config (30; a reload also allows the drain timeout)",
    )
    if with_check:
        p.add_argument("--validate-only", action="store_true", help="only validate the manifest (no root, no kernel)")


def _apply_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nsproxy-apply",
        description="Make kernel state (namespaces, links, addresses) and the nsproxy daemon match MANIFEST.",
        epilog="Exit codes: 0 success or in sync, 1 error, 2 changes pending (--check only).",
    )
    _add_apply_options(p, with_check=True)
    return p


def _main_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nsproxy", description="nsproxy: an HTTP endpoint in every tenant's netns.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="validate manifests (no root, no kernel; for GitOps CI)")
    v.add_argument("manifests", metavar="MANIFEST", nargs="+")
    _add_output(v)
    plan = sub.add_parser("plan", help="show what apply would change (same as nsproxy-apply --check)")
    _add_apply_options(plan, with_check=False)
    apply = sub.add_parser("apply", help="apply a manifest (same as nsproxy-apply)")
    _add_apply_options(apply, with_check=False)
    status = sub.add_parser("status", help="what nsproxy owns (ledger) and the daemon's status")
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
    args = _main_parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.manifests, args.output)
    if args.command == "plan":
        return _apply(args, check=True)
    if args.command == "apply":
        return _apply(args, check=False)
    return _status(args)


# -- commands --------------------------------------------------------------------------------------


def _validate(manifests: list[str], output: str) -> int:
    from . import manifest

    reports = []
    for path in manifests:
        try:
            m = manifest.load(path)
        except manifest.ManifestError as e:
            reports.append({"manifest": path, "valid": False, "errors": list(e.errors), "tenants": 0})
        else:
            reports.append({"manifest": path, "valid": True, "errors": [], "tenants": len(m.tenants)})
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


def _apply(args: argparse.Namespace, *, check: bool) -> int:
    from . import manifest

    try:
        m = manifest.load(args.manifest)
    except manifest.ManifestError as e:
        return _fail(args.output, list(e.errors), "the manifest is invalid; nothing was changed")
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
    from .daemon_control import DaemonError
    from .ledger import LedgerError, LockTimeout
    from .netns import NetnsError
    from .plan import PlanOptions

    options = apply.RunOptions(
        plan=PlanOptions(
            paths=Paths(state_dir=args.state_dir, runtime_dir=args.runtime_dir),
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
    except (LockTimeout, LedgerError, DaemonError) as e:
        raise UserError(str(e)) from None
    except PermissionError as e:
        raise UserError(f"permission denied: {e.filename or ''} {e.strerror or e}".strip()) from None
    except NetnsError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise UserError(f"{where}{e.strerror or e}") from None


def _status(args: argparse.Namespace) -> int:
    from . import daemon_control, ledger, netns
    from .apply import read_config

    paths = Paths(state_dir=args.state_dir, runtime_dir=args.runtime_dir)
    try:
        owned = ledger.load(paths.ledger)
    except ledger.LedgerError as e:
        return _fail(args.output, [str(e)])
    namespaces = []
    for name, entry in sorted(owned.namespaces.items()):
        path = netns.named_path(name)
        state = "missing"
        if netns.exists(name):
            state = "present" if netns.identity(path) == entry.identity else "replaced (foreign)"
        namespaces.append({"name": name, "tenant": entry.tenant, "identity": str(entry.identity), "state": state})
    links = [
        {"netns": link.netns_path, "name": link.name, "kind": link.kind, "ifindex": link.ifindex, "tenant": link.tenant}
        for link in owned.links.values()
    ]
    try:
        status = daemon_control.status(paths)
        daemon: dict[str, Any] = {"running": status.running, "pid": status.pid, "generation": status.generation}
    except NotImplementedError:
        daemon = {"running": None, "pid": None, "generation": None}
    except daemon_control.DaemonError as e:
        return _fail(args.output, [f"daemon: {e}"])
    config = read_config(paths.config)
    report = {
        "ledger": paths.ledger,
        "namespaces": namespaces,
        "links": links,
        "config": {"path": paths.config, "generation": config.get("generation") if config else None},
        "daemon": daemon,
    }
    if args.output == "json":
        _print_json(report)
        return EXIT_OK
    print(f"ledger {paths.ledger}: {len(namespaces)} namespace(s), {len(links)} link(s) owned")
    for n in namespaces:
        print(f"  netns {n['name']:<24} tenant {n['tenant']:<20} {n['state']}")
    for link in links:
        where = f"{link['netns']}/{link['name']}"
        print(f"  link  {where} ({link['kind']}, ifindex {link['ifindex']}) tenant {link['tenant']}")
    print(f"runtime config {paths.config}: generation {report['config']['generation'] or '(none)'}")
    running = {True: "running", False: "not running", None: "unknown"}[daemon["running"]]
    pid = f" (pid {daemon['pid']})" if daemon["pid"] else ""
    print(f"daemon: {running}{pid}, generation {daemon['generation'] or '(none)'}")
    return EXIT_OK


# -- output helpers --------------------------------------------------------------------------------


def _fail(output: str, errors: list[str], note: str | None = None) -> int:
    if output == "json":
        _print_json(
            {
                "changed": False,
                "in_sync": False,
                "actions": [],
                "conflicts": [],
                "errors": errors,
                "daemon": {"action": "skipped", "generation": None},
                "diff": {},
            }
        )
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
