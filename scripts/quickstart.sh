#!/usr/bin/env bash
# The quickstart: install, start the example echo upstream, apply examples/tenants.yaml, and
# send one request from inside each tenant's namespace to show which tenant the upstream saw.
# Run as root on a Debian machine. Re-running it is safe (the applier is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
manifest=${1:-examples/tenants.yaml}

# The example manifest's upstream is http://127.0.0.1:9000 in the host namespace.
if ! curl -fsS -o /dev/null http://127.0.0.1:9000/ 2>/dev/null; then
  mkdir -p /var/lib/nsproxy
  setsid python examples/echo_upstream.py --listen 127.0.0.1:9000 \
    </dev/null >>/var/lib/nsproxy/echo_upstream.log 2>&1 &
  for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:9000/ 2>/dev/null && break; sleep 0.1; done
fi

nsproxy-apply "$manifest"
echo
python - "$manifest" <<'PY'
import json, subprocess, sys
from nsproxy_appliance import manifest
for t in manifest.load(sys.argv[1]).tenants:
    if t.netns.name is None:
        continue
    for listen in t.listen:
        url = f"http://{listen}/quickstart"
        out = subprocess.run(["ip", "netns", "exec", t.netns.name, "curl", "-sS", "--max-time", "5", url],
                             capture_output=True, text=True)
        try:
            headers = dict(json.loads(out.stdout)["headers"])
            seen = f"upstream saw {t.tenant_header}: {headers.get(t.tenant_header)}"
        except ValueError:
            seen = (out.stdout or out.stderr).strip()
        print(f"ip netns exec {t.netns.name} curl {url}  ->  {seen}")
PY
