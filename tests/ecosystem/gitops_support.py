"""Helpers for the GitOps tests: a clone-like copy of this checkout, and throwaway git repos."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GIT_IDENTITY = ["-c", "user.name=nsproxy tests", "-c", "user.email=tests@nsproxy.invalid", "-c", "commit.gpgsign=false"]


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def source_files() -> list[str]:
    """What a clone of this checkout would hold: tracked plus new, not ignored, files."""
    listed = git(REPO, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    return [name for name in listed if name and (os.path.lexists(REPO / name))]


def copy_checkout(dest: Path) -> Path:
    """This checkout's files (symlinks kept as symlinks) committed in a fresh repository at dest:
    what `pre-commit` or a CI runner would clone, uncommitted work included."""
    for name in source_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target, follow_symlinks=False)
    init_repo(dest)
    return dest


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "test")
    return path
