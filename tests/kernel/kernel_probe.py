"""Can this kernel create dummy links? Asked in a throwaway namespace, so nothing is touched.

Used by the kernel stage (to choose between running the suite directly or in a VM) and by the
kernel suite's skip logic. Deliberately independent of nsproxy's own detection
(nsproxy_appliance.kernel), which is part of what the tests check.
"""

from __future__ import annotations

import subprocess

PROBE_LINK = "nsproxyprobe0"


def dummy_links_supported() -> tuple[bool, str]:
    """(supported, detail): create and delete a dummy link in a throwaway netns.

    `unshare --net` gives the shell a fresh namespace that dies with it, so nothing is left behind
    even if the delete never runs. On a kernel with CONFIG_DUMMY=m the add autoloads the module.
    """
    script = f"ip link add {PROBE_LINK} type dummy && ip link del {PROBE_LINK}"
    try:
        out = subprocess.run(
            ["unshare", "--net", "--", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"cannot run the probe: {e}"
    if out.returncode == 0:
        return True, "dummy links work on this kernel"
    return False, (out.stderr or out.stdout).strip() or f"probe exited {out.returncode}"


if __name__ == "__main__":
    import sys

    ok, detail = dummy_links_supported()
    print(detail)
    sys.exit(0 if ok else 1)
