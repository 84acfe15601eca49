"""Build hook: compile the data plane's request-path modules with mypyc (see nsproxy_appliance/daemon/compiled.py).

Everything else about the package is in pyproject.toml. NSPROXY_PURE_PYTHON=1 builds it without
compiling (the same code, run by the interpreter: what the mutation tests use).
"""

from __future__ import annotations

import os
import runpy

from setuptools import setup


def ext_modules() -> list:
    if os.environ.get("NSPROXY_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    here = os.path.dirname(os.path.abspath(__file__))
    modules = runpy.run_path(os.path.join(here, "nsproxy_appliance", "daemon", "compiled.py"))["COMPILED_MODULES"]
    paths = [os.path.join("nsproxy_appliance", "daemon", f"{name}.py") for name in modules]
    return mypycify(paths, opt_level="3", group_name="nsproxy_dataplane")


setup(ext_modules=ext_modules())
