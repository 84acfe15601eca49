"""The shipped observability kit against the real daemon: the Prometheus rules pass
`promtool check rules` and their unit tests, every metric the Grafana dashboard and the rules
query is one nsproxyd really exports, and a tenant's series stay bounded whatever its traffic."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from daemon_harness import Echo, admin, get_in, tenant, write_config
from support.tlscerts import Pki

from nsproxy_appliance import daemon_control, drift
from nsproxy_appliance.daemon import metrics
from nsproxy_appliance.model import Certificate, Listen, ListenTls
from nsproxy_appliance.runtime_config import Paths

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "nsproxy-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "nsproxy-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "nsproxy-dashboard.json"

# Metrics the dashboard and rules already query but that only later work exports. Each entry
# must go when its metric lands (the test below fails once the daemon exports a listed name).
NOT_EXPORTED_YET: set[str] = set()
METRIC_NAME = re.compile(r"\b((?:nsproxy|process)_[a-z0-9_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/setup.sh installs it (Debian package prometheus)"
    return path


def test_rules_pass_promtool_check() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_pass_their_promtool_unit_tests() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Every alert has at least one unit test that expects it to fire.
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tested for case in test["alert_rule_test"] if case.get("exp_alerts")}
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert alerts == fired, alerts ^ fired


def dashboard_exprs() -> dict[str, list[str]]:
    """Panel title -> its queries (rows hold no queries)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in panels if p["type"] != "row"}


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_dashboard_is_importable_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
    for title, exprs in dashboard_exprs().items():
        assert exprs, f"panel {title!r} queries nothing"
        for expr in exprs:
            assert METRIC_NAME.search(expr), f"panel {title!r} queries no nsproxy metric: {expr}"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"job", "instance", "tenant"}


# ---- the real daemon -----------------------------------------------------------------------------


@contextlib.contextmanager
def status_upstream() -> Iterator[int]:
    """A raw HTTP upstream on 127.0.0.1:0: /status/NNN answers NNN, /garbage answers something
    that is not HTTP, /close closes without answering. One request per connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
            path = head.split(b" ", 2)[1].decode().split("?")[0] if head.count(b" ") >= 2 else "/"
            if path == "/close":
                return
            if path == "/garbage":
                reply = b"this is not HTTP\r\n\r\n"
            else:
                code = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
                reply = f"HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            with contextlib.suppress(OSError):
                conn.sendall(reply)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 bound (so no one takes it) but not listening: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.root
def test_dashboard_and_rules_query_only_what_the_daemon_exports(
    daemon_launcher: Paths, make_netns: Callable[[str], str], unique: Callable[[str], str], echo: Echo,
    closed_port: int, tmp_path: Path,
) -> None:  # fmt: skip
    paths = daemon_launcher
    served, broken = unique("obs"), unique("bad")
    ns = make_netns(served)
    broken_ns = make_netns(broken)
    cert = Pki(tmp_path / "pki").server("obs")
    tls = ListenTls(certificates=(Certificate(cert=cert.cert, key=cert.key),))
    with_tls = tenant(served, served, 8080, echo)
    with_tls = dataclasses.replace(with_tls, listen=(*with_tls.listen, Listen("127.0.0.1", 8443, tls)))
    tenants = [
        with_tls,  # a TLS listener: its certificate's expiry is exported
        tenant(broken, broken, 8080, f"http://127.0.0.1:{closed_port}"),
        tenant("ghost", unique("gone"), 8080, echo),  # its namespace does not exist: failed
    ]
    generation = write_config(paths, tenants)
    daemon_control.ensure_daemon(paths, generation, timeout=20)
    assert get_in(ns, "127.0.0.1", 8080, "/").status == 200
    assert get_in(broken_ns, "127.0.0.1", 8080, "/").status == 502  # an upstream error is counted
    # what a reconcile timer's last check found: nsproxy_drift and nsproxy_reconcile_* (drift.py)
    drift.write(paths.drift_file, {"time": 1.0, "mode": "check", "result": "in_sync", "drift": False})

    code, text = admin(paths, "GET", "/metrics")
    assert code == 200
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)) | set(
        re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE)
    )
    assert "nsproxy_build_info" in exported and "process_resident_memory_bytes" in exported
    labels = f'tenant="{served}",listener="127.0.0.1:8443",serial="{cert.serial}"'
    expiry = f"nsproxy_tls_certificate_expiry_seconds{{{labels}}}"
    assert expiry in text

    used: dict[str, set[str]] = {}
    for title, exprs in dashboard_exprs().items():
        for name in METRIC_NAME.findall(" ".join(exprs)):
            used.setdefault(name, set()).add(f"panel {title!r}")
    for alert, expr in rule_exprs().items():
        for name in METRIC_NAME.findall(expr):
            used.setdefault(name, set()).add(f"alert {alert}")
    missing = {name: where for name, where in used.items() if name not in exported and name not in NOT_EXPORTED_YET}
    assert missing == {}
    landed = NOT_EXPORTED_YET & exported
    assert not landed, f"the daemon now exports {landed}: remove them from NOT_EXPORTED_YET"
    assert set(used) >= NOT_EXPORTED_YET, "an allow-listed metric is no longer queried: drop it from the list"


@pytest.mark.root
def test_series_per_tenant_stay_bounded_after_many_statuses_paths_and_errors(
    daemon_launcher: Paths, make_netns: Callable[[str], str], unique: Callable[[str], str], closed_port: int
) -> None:
    paths = daemon_launcher
    busy, refused = unique("many"), unique("ref")
    busy_ns, refused_ns = make_netns(busy), make_netns(refused)
    with status_upstream() as port:
        generation = write_config(
            paths,
            [
                tenant(busy, busy, 8080, f"http://127.0.0.1:{port}"),
                tenant(refused, refused, 8080, f"http://127.0.0.1:{closed_port}"),
            ],
        )
        daemon_control.ensure_daemon(paths, generation, timeout=20)
        codes = {}
        for status in sorted({*range(200, 600, 7), 404, 503, 101, 304, 999}):
            codes[status] = get_in(busy_ns, "127.0.0.1", 8080, f"/status/{status}?unique={status}").status
        for i, path in enumerate(["/garbage", "/close"] * 3):
            get_in(busy_ns, "127.0.0.1", 8080, f"{path}?n={i}")
        for i in range(20):
            get_in(refused_ns, "127.0.0.1", 8080, f"/p{i}")

    _, text = admin(paths, "GET", "/metrics")
    series = {
        name: [line for line in text.splitlines() if f'tenant="{name}"' in line and not line.startswith("#")]
        for name in (busy, refused)
    }
    assert codes[404] == 404 and codes[503] == 503  # the statuses really went through
    reasons = set(re.findall(rf'nsproxy_upstream_errors_total{{tenant="{busy}",reason="([^"]+)"}}', text))
    assert len(reasons) >= 2, reasons  # bad responses and early closes were counted
    classes = set(re.findall(rf'nsproxy_requests_total{{tenant="{busy}",class="([^"]+)"}}', text))
    assert classes <= set(metrics.STATUS_CLASSES), classes
    for name, lines in series.items():
        assert len(lines) <= metrics.MAX_SERIES_PER_TENANT, (name, len(lines), lines)
    assert not [line for line in series[busy] if "unique=" in line or "/status/" in line]
