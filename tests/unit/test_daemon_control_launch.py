"""How daemon_control starts the daemon under systemd (command selection only; no systemd here)."""

from __future__ import annotations

import subprocess

import pytest

from nsproxy_appliance import broker_control, daemon_control
from nsproxy_appliance.runtime_config import Paths


class FakeSystemd:
    """Stands in for systemctl/systemd-run: answers `systemctl show` and records the commands."""

    def __init__(self, exec_start: str | None) -> None:
        self.exec_start = exec_start
        self.commands: list[list[str]] = []

    def run(self, cmd, **kwargs):
        self.commands.append(cmd)
        if cmd[:2] == ["systemctl", "show"]:
            if self.exec_start is None:
                return subprocess.CompletedProcess(cmd, 0, "LoadState=not-found\nExecStart=\n", "")
            return subprocess.CompletedProcess(cmd, 0, f"LoadState=loaded\nExecStart={self.exec_start}\n", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def systemd(monkeypatch):
    def make(exec_start: str | None) -> FakeSystemd:
        fake = FakeSystemd(exec_start)
        monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: True)
        monkeypatch.setattr(daemon_control.subprocess, "run", fake.run)
        # no broker runs here: the transient broker unit "answers" as soon as it is started
        monkeypatch.setattr(broker_control, "answers", lambda paths: any(c[0] == "systemd-run" for c in fake.commands))
        monkeypatch.delenv(broker_control.ENV_DAEMON_USER, raising=False)
        return fake

    return make


def test_installed_unit_for_its_config_is_started(systemd, tmp_path):
    paths = Paths(state_dir=str(tmp_path / "s"), runtime_dir=str(tmp_path / "r"))
    fake = systemd(f"{{ path=/opt/nsproxy/bin/nsproxyd ; argv[]=nsproxyd --config {paths.config} ; }}")
    assert daemon_control.DaemonSupervisor().launch(paths) == (None, "nsproxyd")
    assert fake.commands[-1] == ["systemctl", "start", "nsproxyd.service"]


def test_without_installed_unit_a_transient_one_runs_the_same_python(systemd, tmp_path):
    paths = Paths(state_dir=str(tmp_path / "s"), runtime_dir=str(tmp_path / "r"))
    fake = systemd(None)
    pid, unit = daemon_control.DaemonSupervisor().launch(paths)
    assert pid is None
    assert unit.startswith("nsproxyd-")  # not the default runtime dir: a name of its own
    cmd = fake.commands[-1]
    assert cmd[:3] == ["systemd-run", "--unit", unit]
    assert "--collect" in cmd
    tail = cmd[cmd.index(daemon_control.sys.executable) :]
    assert tail == [*daemon_control.daemon_argv(paths), "--broker", paths.broker_socket]
    assert ["--config", paths.config] == tail[3:5] and tail[5:7] == ["--pidfile", paths.pidfile]
    # the socket broker first, as its own transient unit, with the same Python
    (broker,) = [c for c in fake.commands if c[0] == "systemd-run" and "nsproxy_appliance.broker.server" in c]
    assert broker[:3] == ["systemd-run", "--unit", broker_control.transient_unit(paths)]
    assert "Type=notify" in broker and daemon_control.sys.executable in broker
    assert fake.commands.index(broker) < fake.commands.index(cmd)


def test_installed_unit_for_another_config_is_not_used(systemd, tmp_path):
    paths = Paths(state_dir=str(tmp_path / "s"), runtime_dir=str(tmp_path / "r"))
    fake = systemd("{ argv[]=nsproxyd --config /run/nsproxy/config.json ; }")
    _, unit = daemon_control.DaemonSupervisor().launch(paths)
    assert unit != "nsproxyd"
    assert fake.commands[-1][0] == "systemd-run"


def test_failing_systemd_command_is_a_daemon_error(systemd, tmp_path, monkeypatch):
    paths = Paths(state_dir=str(tmp_path / "s"), runtime_dir=str(tmp_path / "r"))
    fake = systemd(None)
    real_run = fake.run

    def run(cmd, **kwargs):
        if cmd[0] == "systemd-run":
            return subprocess.CompletedProcess(cmd, 1, "", "Unit nsproxyd-x.service already exists.")
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(daemon_control.subprocess, "run", run)
    with pytest.raises(daemon_control.DaemonError, match="already exists"):
        daemon_control.DaemonSupervisor().launch(paths)
