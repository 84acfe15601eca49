"""runtime_config.Loader: reloads reuse what did not change, and read only what the delta names."""

from __future__ import annotations

import dataclasses
import json

import pytest
from support import tenant

from nsproxy_appliance import runtime_config
from nsproxy_appliance.errors import RuntimeConfigError
from nsproxy_appliance.model import DaemonSettings, Manifest
from nsproxy_appliance.paths import Paths


def write(path, tenants):
    paths = Paths(state_dir=str(path.parent), runtime_dir=str(path.parent))
    config = runtime_config.render(Manifest(1, tuple(tenants), DaemonSettings()), paths)
    runtime_config.write(config, str(path))
    return config


def many(n, **kw):
    return [tenant(f"t{i}", f"ns{i}", **kw) for i in range(n)]


def test_a_loaded_config_equals_a_whole_parse_and_keeps_unchanged_tenants_objects(tmp_path):
    path = tmp_path / "config.json"
    tenants = many(20)
    write(path, tenants)
    loader = runtime_config.Loader(str(path))
    first = loader.load()
    assert first == runtime_config.load(str(path)) and not loader.incremental
    changed = dataclasses.replace(tenants[5], tenant_id="new-id")
    write(path, [*tenants[:5], changed, *tenants[6:19], tenant("added", "nsx")])  # t19 removed
    assert "delta" in json.loads(path.read_text())  # the writer named what changed
    second = loader.load()
    whole = runtime_config.load(str(path))
    assert dataclasses.replace(second, tenants=()) == dataclasses.replace(whole, tenants=())
    assert sorted(second.tenants, key=lambda t: t.name) == sorted(whole.tenants, key=lambda t: t.name)
    assert loader.incremental
    assert sorted(t.name for t in loader.changed) == ["added", "t5"]
    assert sorted((t.name, t.tenant_id) for t in loader.removed) == [("t19", "t19"), ("t5", "t5")]
    by_name = {t.name: t for t in second.tenants}
    assert all(by_name[t.name] is t for t in first.tenants if t.name not in ("t5", "t19"))  # the same objects
    assert by_name["t5"].tenant_id == "new-id"


def test_without_a_delta_every_line_is_compared(tmp_path):
    path = tmp_path / "config.json"
    tenants = many(10)
    write(path, tenants)
    loader = runtime_config.Loader(str(path))
    first = loader.load()
    doc = path.read_bytes()
    write(path, [*tenants[:3], dataclasses.replace(tenants[3], tenant_id="x"), *tenants[4:]])
    path.write_text(path.read_text().replace('"delta":', '"x-delta":', 1))  # a file without a delta
    assert b'"x-delta"' in path.read_bytes() and doc != path.read_bytes()
    second = loader.load()
    assert [t.name for t in loader.changed] == ["t3"]
    assert all(a is b for a, b in zip(first.tenants, second.tenants, strict=True) if a.name != "t3")


def test_a_delta_from_another_generation_is_not_trusted(tmp_path):
    path = tmp_path / "config.json"
    tenants = many(5)
    write(path, tenants)
    loader = runtime_config.Loader(str(path))
    loader.load()
    write(path, many(3))  # the writer's delta is relative to the file it replaced...
    write(path, [*many(3), tenant("late", "nsl")])  # ...but this loader missed that generation
    config = loader.load()
    assert sorted(t.name for t in config.tenants) == ["late", "t0", "t1", "t2"]
    assert sorted(t.name for t in loader.removed) == ["t3", "t4"]


def test_a_bad_changed_line_names_its_file_line(tmp_path):
    path = tmp_path / "config.json"
    write(path, many(3))
    loader = runtime_config.Loader(str(path))
    loader.load()
    lines = path.read_text().split("\n")
    lines[2] = lines[2].replace('"tenant_id": "t1"', '"tenant_id": 7')
    path.write_text("\n".join(lines))
    with pytest.raises(RuntimeConfigError, match=r"config.json:3: .*tenant_id"):
        loader.load()
    write(path, many(3))  # fixed: the loader goes on from the last config it loaded
    assert [t.name for t in loader.load().tenants] == ["t0", "t1", "t2"]


def test_the_delta_is_not_part_of_the_generation(tmp_path):
    path = tmp_path / "config.json"
    a = write(path, many(3))
    write(path, many(4))
    b = write(path, many(3))
    assert a["generation"] == b["generation"]
    assert json.loads(path.read_text())["generation"] == a["generation"]


def test_equal_limits_upstreams_and_listeners_are_one_object(tmp_path):
    path = tmp_path / "config.json"
    write(path, many(50))
    config = runtime_config.Loader(str(path)).load()
    assert len({id(t.limits) for t in config.tenants}) == 1
    assert len({id(t.upstream) for t in config.tenants}) == 1
    assert len({id(t.listen) for t in config.tenants}) == 1
    assert len({id(t.netns) for t in config.tenants}) == 50  # each tenant's own
