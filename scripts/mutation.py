"""Mutation check of the modules that guard the four promises (docs/testing.md, "Mutation check").

Runs mutmut 3 on a copy of the checkout's Python sources and tests WITHOUT the mypyc-compiled
extensions: an editable install builds .so files next to the data plane's .py, Python would
import those, and no mutant would ever run (the copy is checked before and after). mutmut mutates
the copy in build/mutation/<group>/mutants/, learns which test reaches which function in one run
of the group's tests, then runs only those tests against each mutant.

    bash scripts/mutation.sh                      # every module: the score per module
    bash scripts/mutation.sh request_head http    # some of them
    bash scripts/mutation.sh --survivors http     # re-test only the last run's survivors (after adding tests)
    bash scripts/mutation.sh --survivors http --only connection_made   # only some of them
    bash scripts/mutation.sh --report             # the table of the last run, nothing run
    bash scripts/mutation.sh --show http          # the diff of each unlisted survivor

A module named is always mutated and tested from scratch (its cached results could predate a
change to its tests); --survivors re-tests only what the last run did not kill, and keeps its kills.
mutmut always gets every test of the group, so naming fewer modules keeps its cache. The last
lines are the score per module; survivors listed in docs/testing.md (equivalent or harmless, each
with the reason) are counted apart. Exit 1 when a module has an unlisted survivor or lists one
that is now killed or gone; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "mutation"
DOC = REPO / "docs" / "testing.md"
MUTMUT = Path(sys.executable).parent / "mutmut"

# What mutmut's copy needs: the package's sources and data, the tests and what they read.
COPY = ("nsproxy_appliance", "tests", "examples", "schemas", "pyproject.toml")
COPY_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".toml", ".txt", ".j2", ".sh")


@dataclass(frozen=True)
class Group:
    """Modules mutated in one mutmut work dir (their tests import each other's fakes)."""

    name: str

    @property
    def work(self) -> Path:
        return BUILD / self.name


DATA_PLANE = Group("dataplane")
CONTROL_PLANE = Group("controlplane")

DATA_PLANE_TESTS = (
    "tests/unit/test_request_head.py",
    "tests/unit/test_request_rewrite.py",
    "tests/unit/test_response_head.py",
    "tests/unit/test_response_rewrite.py",
    "tests/unit/test_framing.py",
    "tests/unit/test_protocol.py",
    "tests/unit/test_protocol_exchange.py",
    "tests/unit/test_upstream_connection.py",
    "tests/unit/test_upstream_pool.py",
    "tests/unit/test_upstream_tls_pool.py",
    "tests/unit/test_tunnel.py",
    "tests/unit/test_protocol_connection.py",
    "tests/unit/test_protocol_exchange_flow.py",
    "tests/unit/test_upstream_connection_state.py",
    "tests/unit/test_upstream_cork.py",
)

# Tests that fail because they found a bug not fixed yet: mutmut needs a green run to start from,
# so they are left out of it (and named in its output) until the fix lands. Remove them then.
KNOWN_BUGS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Module:
    path: str
    group: Group
    tests: tuple[str, ...]  # the fast tests that guard it (unit, socket-free, in-process)

    @property
    def dotted(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")


MODULES = {
    "request_head": Module("nsproxy_appliance/daemon/request_head.py", DATA_PLANE, DATA_PLANE_TESTS),
    "response_head": Module("nsproxy_appliance/daemon/response_head.py", DATA_PLANE, DATA_PLANE_TESTS),
    "framing": Module("nsproxy_appliance/daemon/framing.py", DATA_PLANE, DATA_PLANE_TESTS),
    "http": Module("nsproxy_appliance/daemon/http.py", DATA_PLANE, DATA_PLANE_TESTS),
    "upstream": Module("nsproxy_appliance/daemon/upstream.py", DATA_PLANE, DATA_PLANE_TESTS),
    "tunnel": Module("nsproxy_appliance/daemon/tunnel.py", DATA_PLANE, DATA_PLANE_TESTS),
    "plan": Module(
        "nsproxy_appliance/plan.py",
        CONTROL_PLANE,
        ("tests/unit/test_plan.py", "tests/unit/test_plan_diff.py", "tests/unit/test_executor.py"),
    ),
    "apply": Module(
        "nsproxy_appliance/apply.py",
        CONTROL_PLANE,
        ("tests/unit/test_executor.py", "tests/unit/test_apply_verify.py", "tests/unit/test_apply_outcomes.py"),
    ),
    "ledger": Module(
        "nsproxy_appliance/ledger.py",
        CONTROL_PLANE,
        ("tests/unit/test_ledger.py", "tests/unit/test_ledger_intents.py", "tests/unit/test_executor.py"),
    ),
    "daemon_control": Module(
        "nsproxy_appliance/daemon_control.py",
        CONTROL_PLANE,
        (
            "tests/unit/test_daemon_control_launch.py",
            "tests/unit/test_daemon_control_retry.py",
            "tests/unit/test_daemon_control_process.py",
        ),
    ),
}


# -- the copy ---------------------------------------------------------------------------------
def sync_tree(work: Path) -> None:
    """Mirror the sources into `work` (mtimes kept: mutmut compares them)."""
    work.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for top in COPY:
        src = REPO / top
        for path in [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(REPO)
            if "__pycache__" in rel.parts or not path.name.endswith(COPY_SUFFIXES):
                continue  # never an .so: the copy must import the source
            wanted.add(rel)
            dest = work / rel
            st = path.stat()
            if dest.exists() and dest.stat().st_mtime == st.st_mtime and dest.stat().st_size == st.st_size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    for top in COPY:
        root = work / top
        for path in [root] if root.is_file() else list(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.relative_to(work) not in wanted:
                path.unlink()  # deleted in the checkout
                (work / "mutants" / path.relative_to(work)).unlink(missing_ok=True)
    compiled = [p for p in work.rglob("*") if p.suffix in (".so", ".pyd")]
    if compiled:
        raise SystemExit(f"compiled modules in {work}: {compiled[:3]} (the mutants would never run)")


def check_pure(where: Path) -> None:
    """The tree in `where` imports its data plane from .py files, not from a compiled extension."""
    code = (
        "import os, sys\n"
        "sys.path.insert(0, os.getcwd())\n"
        "from nsproxy_appliance.daemon import compiled, http\n"
        "assert http.__file__ == os.path.join(os.getcwd(), 'nsproxy_appliance/daemon/http.py'), http.__file__\n"
        "assert not compiled.is_compiled()\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=where, check=True)


MYPY_ARGS = ("--output", "json", "--no-warn-unused-ignores", "--disable-error-code", "no-redef")


def selected_tests(modules: list[Module]) -> list[str]:
    return sorted({t for m in modules for t in m.tests if (REPO / t).exists()})


def group_tests(group: Group) -> list[str]:
    return selected_tests([m for m in MODULES.values() if m.group is group])


def write_config(group: Group) -> None:
    """mutmut's settings: all the group's modules and all their tests, whichever modules a run
    re-tests (those start over, or are named on mutmut's command line). mutmut drops its cached
    results when the test selection changes; it still runs only the tests that reach a mutant."""

    def option(name: str, values: list[str]) -> str:
        return f"{name} =\n" + "".join(f"    {v}\n" for v in values)

    tests = group_tests(group)
    deselect = [arg for test in KNOWN_BUGS if test.split("::")[0] in tests for arg in ("--deselect", test)]
    (group.work / "setup.cfg").write_text(
        "# written by scripts/mutation.py: do not edit\n[mutmut]\nsource_paths = nsproxy_appliance\n"
        # every module of the group: mutmut resets the mutated copy of a module it is not told to
        # mutate, which would leave that module's results without the code --show diffs
        + option("only_mutate", [m.path for m in MODULES.values() if m.group is group])
        + option("pytest_add_cli_args_test_selection", tests)
        + option("pytest_add_cli_args", ["-p", "no:cacheprovider", *deselect])
        # mypy first: a mutant it rejects is one the build (mypyc) and scripts/test.sh refuse too
        # (mutmut's copies of a method repeat its annotated attributes: that redefinition is its own)
        + option("type_check_command", [sys.executable, "-m", "mypy", *MYPY_ARGS, "nsproxy_appliance"])
        + "use_git_change_detection = false\non_dependency_change = ignore\n"
    )


def start_over(group: Group, modules: list[Module]) -> None:
    """Forget the modules' mutants and results, and the group's test-to-function map."""
    for module in modules:
        copy = group.work / "mutants" / module.path
        copy.unlink(missing_ok=True)
        Path(f"{copy}.meta").unlink(missing_ok=True)
        Path(f"{copy}.spans").unlink(missing_ok=True)
    (group.work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)


# -- results ----------------------------------------------------------------------------------
# A test failed (1), pytest errored (3), the mutant hung (timeouts), or mypy rejected it (37): the
# data plane is compiled by mypyc, and scripts/test.sh runs mypy, so such a mutant can never ship.
KILLED = {1, 3, 24, -24, 152, 255, 36, -9, 37}
TIMED_OUT = {24, -24, 152, -9}  # a listed (equivalent) mutant that only timed out: a loaded machine
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}


def listed_equivalents() -> dict[str, str]:
    """Mutant names docs/testing.md lists as equivalent or harmless: `name` -> reason."""
    if not DOC.exists():
        return {}
    found = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(nsproxy_appliance\.[^`]+__mutmut_\d+)`\s*\|(.*)\|\s*$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def module_results(module: Module) -> dict[str, int | None]:
    meta = module.group.work / "mutants" / f"{module.path}.meta"
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def unkilled(module: Module) -> list[str]:
    return sorted(k for k, code in module_results(module).items() if code not in KILLED)


def report(names: list[str]) -> int:
    equivalent = listed_equivalents()
    rows, problems, notes = [], [], []
    for name in names:
        module = MODULES[name]
        results = module_results(module)
        if not results:
            rows.append(f"{name:<16} not run")
            continue
        killed = sum(1 for code in results.values() if code in KILLED)
        by_mypy = sum(1 for code in results.values() if code == 37)
        left = unkilled(module)
        listed = [k for k in left if k in equivalent]
        open_ = [k for k in left if k not in equivalent]
        mine = [k for k in equivalent if k.startswith(module.dotted + ".") and k not in listed]
        slow = [k for k in mine if results.get(k) in TIMED_OUT]
        stale = [k for k in mine if k not in slow]
        total = len(results)
        rows.append(
            f"{name:<16} {total:>7} {killed - by_mypy:>7} {by_mypy:>5} {len(listed):>7} {len(open_):>5} "
            f"{100.0 * killed / total:>7.1f}% {100.0 * (killed + len(listed)) / total:>8.1f}%"
        )
        problems += [f"  {k}: {STATUS.get(results[k], 'suspicious')}" for k in open_]
        problems += [
            f"  {k}: listed in docs/testing.md but {'killed' if k in results else 'gone'} (update the list)"
            for k in stale
        ]
        notes += [f"  {k}: listed in docs/testing.md, timed out this run (not a kill: run it again)" for k in slow]
    head = "module           mutants   tests  mypy  listed  open  killed%  +listed%"
    print(f"\n{head}\n(killed by: a test, or mypy; listed: equivalent or harmless, docs/testing.md)")
    print("\n".join(rows))
    if notes:
        print("\n".join(["", *notes]))
    if problems:
        print("\nnot killed and not listed in docs/testing.md (diffs: bash scripts/mutation.sh --show MODULE):")
        print("\n".join(problems))
        return 1
    return 0


def show(names: list[str]) -> int:
    """The diffs of the unlisted survivors (mutmut's own diff, in one process per group)."""
    equivalent = listed_equivalents()
    code = (
        "import sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "for path, key in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    print('#', key)\n"
        "    try:\n"
        "        print(get_diff_for_mutant(key, path=path))\n"
        "    except Exception as e:  # mutmut cannot diff some (a class's __init__): say so, go on\n"
        "        print(f'(no diff: {type(e).__name__}: {e})')\n"
    )
    rc = 0
    for group in (DATA_PLANE, CONTROL_PLANE):
        pairs = [
            part
            for name in names
            if MODULES[name].group is group
            for key in unkilled(MODULES[name])
            if key not in equivalent
            for part in (MODULES[name].path, key)
        ]
        if pairs:
            rc |= subprocess.run([sys.executable, "-c", code, *pairs], cwd=group.work, check=False).returncode
    return rc


# -- running ----------------------------------------------------------------------------------
def run_group(group: Group, modules: list[Module], *, survivors: bool, only: list[str], max_children: int) -> int:
    sync_tree(group.work)
    write_config(group)
    check_pure(group.work)
    names: list[str] = []
    earlier: dict[Module, dict[str, int | None]] = {}
    if survivors:
        names = [k for m in modules for k in unkilled(m) if not only or any(part in k for part in only)]
        if not names:
            print(f"{group.name}: no survivors to re-test")
            return 0
        earlier = {m: module_results(m) for m in modules}
    else:
        start_over(group, modules)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    log = group.work / "mutmut.log"
    what = f"{len(names)} survivors of " if survivors else ""
    print(f"mutmut run: {what}{', '.join(n for n, m in MODULES.items() if m in modules)}", flush=True)
    for test in KNOWN_BUGS:
        if test.split("::")[0] in group_tests(group):
            print(f"  left out (fails on a known bug): {test}")
    print(f"  progress: tail -c 300 {log.relative_to(REPO)}", flush=True)
    with log.open("w") as out:
        argv = [str(MUTMUT), "run", "--max-children", str(max_children), *names]
        run = subprocess.run(argv, cwd=group.work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if run.returncode:
        print(log.read_text()[-3000:])
        print(f"mutmut exited {run.returncode}")
    check_pure(group.work / "mutants")
    for module, results in earlier.items():
        keep_kills(module, results)
    return run.returncode


def keep_kills(module: Module, earlier: dict[str, int | None]) -> None:
    """Put back the verdicts of mutants killed before a --survivors run: mutmut forgets them all
    when the test selection changed (a new test file), but a test added kills more, never fewer."""
    meta = module.group.work / "mutants" / f"{module.path}.meta"
    if not meta.exists():
        return
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    kept = {k: code for k, code in earlier.items() if code in KILLED and k in codes and codes[k] is None}
    if kept:
        codes.update(kept)
        meta.write_text(json.dumps(data, indent=4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--survivors", action="store_true", help="re-test only what the last run did not kill")
    parser.add_argument("--report", action="store_true", help="only print the table of the last run")
    parser.add_argument("--show", action="store_true", help="print the diff of every unlisted survivor")
    parser.add_argument(
        "--only", action="append", default=[], metavar="TEXT", help="with --survivors: only names containing TEXT"
    )
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel (default 2)")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    names = args.modules or list(MODULES)
    if args.report:
        return report(names)
    if args.show:
        return show(names)
    if not MUTMUT.exists():
        raise SystemExit(f"{MUTMUT} not found: install the dev extra (bash scripts/setup.sh)")
    started = time.monotonic()
    failed = 0
    for group in (DATA_PLANE, CONTROL_PLANE):
        modules = [MODULES[n] for n in names if MODULES[n].group is group]
        if modules:
            failed |= run_group(
                group, modules, survivors=args.survivors, only=args.only, max_children=args.max_children
            )
    print(f"\nmutation check: {time.monotonic() - started:.0f} s for {', '.join(names)}")
    return report(names) or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
