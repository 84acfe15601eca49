"""`nsproxy status` without a daemon: which tenants it must find served, and its verdict."""

from __future__ import annotations

import pytest
from support import tenant

from nsproxy_appliance import runtime_config, status
from nsproxy_appliance.model import Manifest
from nsproxy_appliance.paths import Paths


@pytest.fixture
def paths(tmp_path) -> Paths:
    return Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))


def write(paths: Paths, served: list[str], excluded: dict[str, str] | None = None) -> None:
    m = Manifest(version=1, tenants=tuple(tenant(n) for n in served))
    names = [*served, *(excluded or {})]
    runtime_config.write(runtime_config.render(m, paths, all_tenants=names, excluded=excluded), paths.config)


def test_nothing_applied_is_not_serving(paths):
    report, code = status.collect(paths)
    assert code == 1 and report["serving"] is False and report["tenants"] == []
    assert "nothing was applied since boot" in report["errors"][0]


def test_the_last_apply_names_the_tenants_including_those_it_left_out(paths):
    write(paths, ["acme"], excluded={"globex": "conflict: globex: not ours"})
    report, code = status.collect(paths)
    assert code == 1
    assert [(t["name"], t["state"]) for t in report["tenants"]] == [("acme", "not served"), ("globex", "excluded")]
    assert report["not_serving"] == {
        "acme": "the daemon is not running",
        "globex": "left out by nsproxy-apply: conflict: globex: not ours",
    }
    assert "FAILED" not in status.to_text(report) and "0 of 2 tenants serving" in status.to_text(report)


def test_a_manifest_given_decides_which_tenants_count(paths):
    write(paths, ["acme"])
    m = Manifest(version=1, tenants=(tenant("acme"), tenant("newcomer")))
    report, _ = status.collect(paths, m)
    assert [t["name"] for t in report["tenants"]] == ["acme", "newcomer"]
    assert report["tenants"][1]["netns"]["path"] == "/run/netns/newcomer"
