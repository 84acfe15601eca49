"""Which user plan checks the TLS files as: the installed unit's User= (with what the unit hides),
else NSPROXY_DAEMON_USER, else none (a root daemon reads whatever root can)."""

from __future__ import annotations

import os
import pwd

import pytest

from nsproxy_appliance import broker_control, daemon_control, daemon_user
from nsproxy_appliance.paths import Paths

PATHS = Paths(state_dir="/nonexistent/state", runtime_dir="/nonexistent/run")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def no_systemd(monkeypatch):
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: False)


@pytest.mark.parametrize("value", ["", "root", "0", "  "])
def test_a_root_daemon_has_nothing_to_check(no_systemd, monkeypatch, value):
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, value)
    assert daemon_user.daemon_user(PATHS) is None


@pytest.mark.parametrize("value", ["nobody", str(NOBODY.pw_uid)])
def test_the_applier_launched_daemon_is_its_user_without_groups(no_systemd, monkeypatch, value):
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, value)
    user = daemon_user.daemon_user(PATHS)
    assert user is not None
    assert (user.name, user.uid, user.gid, user.groups, user.hidden) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid, (), ())


def test_a_user_that_does_not_exist_is_left_to_the_launch(no_systemd, monkeypatch):
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, "no-such-user-nsproxy")
    assert daemon_user.daemon_user(PATHS) is None


def test_the_installed_unit_user_its_groups_and_the_directories_it_hides(monkeypatch):
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, "root")  # the unit wins over the environment
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: True)
    installed = {"LoadState": "loaded", "ExecStart": f"nsproxyd --config {PATHS.config}"}
    asked: list[tuple[str, tuple[str, ...]]] = []
    answer = {"User": "nobody", "PrivateTmp": "yes", "ProtectHome": "read-only"}

    def properties(unit: str, names: tuple[str, ...]) -> dict[str, str]:
        asked.append((unit, names))
        return {**installed, **answer}

    monkeypatch.setattr(daemon_control, "unit_properties", properties)
    user = daemon_user.daemon_user(PATHS)
    # one systemctl show: whether the launch uses the unit, and as whom it runs
    assert asked == [("nsproxyd.service", ("LoadState", "ExecStart", "User", "PrivateTmp", "ProtectHome"))]
    assert user is not None and user.name == "nobody"
    assert user.groups == tuple(os.getgrouplist("nobody", NOBODY.pw_gid))
    assert user.hidden == ("/tmp", "/var/tmp", "/home", "/root", "/run/user")

    answer = {"User": "nobody", "PrivateTmp": "no"}
    assert daemon_user.daemon_user(PATHS).hidden == ()  # type: ignore[union-attr]  # asserted not None above
    answer = {"User": ""}
    assert daemon_user.daemon_user(PATHS) is None  # the unit runs it as root
    installed = {"LoadState": "loaded", "ExecStart": "nsproxyd --config /elsewhere/config.json"}
    answer = {"User": "nobody", "PrivateTmp": "yes"}
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, "nobody")
    other = daemon_user.daemon_user(PATHS)  # a unit for another config: the applier's own launch
    assert other is not None and other.groups == () and other.hidden == ()


def test_a_transient_unit_is_the_applier_launch(monkeypatch):
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, "nobody")
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: True)
    monkeypatch.setattr(daemon_control, "unit_properties", lambda unit, names: {"LoadState": "not-found"})
    user = daemon_user.daemon_user(PATHS)
    assert user is not None and user.groups == () and user.hidden == ()
