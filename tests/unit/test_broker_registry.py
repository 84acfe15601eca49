"""broker/registry.py: what the broker may make sockets for follows the runtime config, whether a
reload is read from the delta alone or whole (no sockets: the config file only)."""

from __future__ import annotations

import dataclasses

from support import tenant

from nsproxy_appliance import runtime_config
from nsproxy_appliance.broker.registry import Registry
from nsproxy_appliance.model import DaemonSettings, Manifest, Tenant
from nsproxy_appliance.paths import Paths


def write(path, tenants: list[Tenant]) -> None:
    paths = Paths(state_dir=str(path.parent), runtime_dir=str(path.parent))
    runtime_config.write(runtime_config.render(Manifest(1, tuple(tenants), DaemonSettings()), paths), str(path))


def dialling(t: Tenant) -> Tenant:
    return dataclasses.replace(t, upstream=dataclasses.replace(t.upstream, from_ns="tenant"))


def view(registry: Registry, paths: list[str]) -> tuple[dict[str, Tenant], dict[str, frozenset[str]], list[bool]]:
    keys = {name: registry.listen_keys(name) for name in registry.tenants}
    return dict(registry.tenants), keys, [registry.dials_upstream_from(p) for p in paths]


def test_a_reload_read_from_its_delta_leaves_the_registry_as_a_whole_read_would(tmp_path):
    path = tmp_path / "config.json"
    a, b = dialling(tenant("a", "shared")), dialling(tenant("b", "shared"))
    c = tenant("c", "own")
    write(path, [a, b, c])
    registry = Registry(str(path))
    assert registry.refresh() and registry.error is None
    shared, own = a.netns.path, c.netns.path
    assert view(registry, [shared, own])[2] == [True, False]
    assert registry.listen_keys("c") == {"127.0.0.1:8080"}
    steps = [
        [b, c],  # a leaves: b still dials from the shared namespace
        [b, dataclasses.replace(c, listen=(dataclasses.replace(c.listen[0], port=9090),))],  # c listens elsewhere
        [dataclasses.replace(b, upstream=c.upstream), tenant("c", "own", port=9090)],  # nobody dials from it now
        [dialling(tenant("c", "own", port=9090))],  # b leaves, c dials from its own
    ]
    for tenants in steps:
        write(path, tenants)
        assert registry.refresh()
        assert registry._loader is not None and registry._loader.incremental
        fresh = Registry(str(path))
        fresh.refresh()
        assert view(registry, [shared, own]) == view(fresh, [shared, own])
        assert registry.generation == fresh.generation
    assert view(registry, [shared, own])[1:] == ({"c": frozenset({"127.0.0.1:9090"})}, [False, True])
    assert registry.refresh() is False  # the file did not change: not read again
