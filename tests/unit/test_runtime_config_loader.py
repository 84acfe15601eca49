"""runtime_config.Loader: reloads reuse what did not change, and read only what the delta names."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from support import tenant

from nsproxy_appliance import daemon_control, runtime_config
from nsproxy_appliance.errors import RuntimeConfigError
from nsproxy_appliance.model import DaemonSettings, Manifest
from nsproxy_appliance.paths import DRAIN_TIMEOUT, Paths


def write(path, tenants):
    paths = Paths(state_dir=str(path.parent), runtime_dir=str(path.parent))
    config = runtime_config.render(Manifest(1, tuple(tenants), DaemonSettings()), paths)
    runtime_config.write(config, str(path))
    return config


def many(n, **kw):
    return [tenant(f"t{i}", f"ns{i}", **kw) for i in range(n)]


def loaded(tmp_path, tenants):
    """A config of `tenants` written and loaded once: (its path, the loader, what it loaded)."""
    path = tmp_path / "config.json"
    write(path, tenants)
    loader = runtime_config.Loader(str(path))
    return path, loader, loader.load()


def test_a_loaded_config_equals_a_whole_parse_and_keeps_unchanged_tenants_objects(tmp_path):
    tenants = many(20)
    path, loader, first = loaded(tmp_path, tenants)
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
    tenants = many(10)
    path, loader, first = loaded(tmp_path, tenants)
    doc = path.read_bytes()
    write(path, [*tenants[:3], dataclasses.replace(tenants[3], tenant_id="x"), *tenants[4:]])
    path.write_text(path.read_text().replace('"delta":', '"x-delta":', 1))  # a file without a delta
    assert b'"x-delta"' in path.read_bytes() and doc != path.read_bytes()
    second = loader.load()
    assert [t.name for t in loader.changed] == ["t3"]
    assert all(a is b for a, b in zip(first.tenants, second.tenants, strict=True) if a.name != "t3")


def test_a_delta_from_another_generation_is_not_trusted(tmp_path):
    tenants = many(5)
    path, loader, _ = loaded(tmp_path, tenants)
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


class CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out


def test_a_reload_whose_delta_carries_the_changes_reads_the_head_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_config, "HEAD_READ", 512)
    tenants = many(300)
    path, loader, first = loaded(tmp_path, tenants)
    changed = dataclasses.replace(tenants[7], tenant_id="new-id")
    write(path, [*tenants[:7], changed, *tenants[8:299], tenant("added", "nsx")])  # t299 removed
    data = path.read_bytes()
    f = CountingFile(data)
    second = loader.load_file(f)
    body_at = data.index(b', "tenants": [\n')
    assert f.bytes_read < body_at + 512 < len(data) // 4  # the head, not the 300 tenants' lines
    assert second == runtime_config.load(str(path))  # the same config, the same order
    assert loader.incremental and sorted(t.name for t in loader.changed) == ["added", "t7"]
    assert sorted((t.name, t.tenant_id) for t in loader.removed) == [("t299", "t299"), ("t7", "t7")]
    assert all(a is b for a, b in zip(first.tenants[:299], second.tenants, strict=False) if a.name != "t7")


def test_a_delta_of_the_version_before_finds_its_lines_in_the_body(tmp_path):
    tenants = many(10)
    path, loader, _ = loaded(tmp_path, tenants)
    write(path, [*tenants[:3], dataclasses.replace(tenants[3], tenant_id="x"), *tenants[4:9]])  # t9 removed
    doc = json.loads(path.read_text())
    del doc["delta"]["changed"]  # as the applier of the version before writes it
    lines = path.read_text().split("\n")
    lines[0] = json.dumps({k: v for k, v in doc.items() if k != "tenants"}, sort_keys=True)[:-1] + ', "tenants": ['
    path.write_text("\n".join(lines))
    assert "changed" not in json.loads(path.read_text())["delta"]
    config = loader.load()
    assert config == runtime_config.load(str(path))
    assert [t.name for t in loader.changed] == ["t3"] and sorted(t.name for t in loader.removed) == ["t3", "t9"]


def test_a_bad_entry_in_the_delta_is_a_clear_error_and_changes_nothing(tmp_path):
    tenants = many(3)
    path, loader, first = loaded(tmp_path, tenants)
    write(path, [tenants[0], dataclasses.replace(tenants[1], tenant_id="x"), tenants[2]])
    path.write_text(path.read_text().replace('"tenant_id": "x"', '"tenant_id": 7', 1))
    with pytest.raises(RuntimeConfigError, match=r"config.json: delta, tenant 't1': .*tenant_id"):
        loader.load()
    write(path, tenants)  # the first config again...
    write(path, [*tenants, tenant("t3", "ns3")])  # ...and a delta from it: the generation the loader kept
    assert json.loads(path.read_text())["delta"]["from"] == first.generation
    config = loader.load()
    assert [t.name for t in config.tenants] == ["t0", "t1", "t2", "t3"]
    assert [t.name for t in loader.changed] == ["t3"] and loader.removed == []
    assert config.tenants[:3] == first.tenants and config.tenants[1].tenant_id == "t1"


@pytest.mark.parametrize(
    "excluded",
    [
        {},
        {"t1": 'it says , "tenants": [ and "manifest": {'},  # the patterns, escaped inside strings
        {'name , "tenants": ["x"]}': "odd"},
    ],
)
def test_the_head_is_decoded_without_the_manifest_s_names_and_nothing_else_is_lost(tmp_path, excluded):
    path = tmp_path / "config.json"
    tenants = many(4)
    paths = Paths(state_dir=str(tmp_path), runtime_dir=str(tmp_path))
    names = [t.name for t in tenants] + list(excluded)
    manifest = Manifest(1, tuple(tenants), DaemonSettings())
    for served in (tenants, tenants[:2]):  # the second written over the first: with a delta
        config = runtime_config.render(
            dataclasses.replace(manifest, tenants=tuple(served)), paths, all_tenants=names, excluded=excluded
        )
        runtime_config.write(config, str(path))
    data = path.read_bytes()
    whole = json.loads(data)
    assert whole["manifest"]["tenants"] == names and "delta" in whole
    head = runtime_config._head_of(data)
    expected = {k: v for k, v in whole.items() if k != "tenants"} | {"tenants": []}
    del expected["manifest"]["tenants"]
    assert head == expected
    assert runtime_config.Loader(str(path)).load().excluded == excluded


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"[" * 200_000, r"config.json:1:\d+: invalid JSON: depth limit exceeded"),  # json: RecursionError
        (b'{"format": 1,\n "x": \xff}', r"config.json:1:1: invalid JSON: str is not valid UTF-8"),  # checked first
        (b'{"format": 1,\n "x": [1,,]}', r"config.json:2:\d+: invalid JSON: "),
    ],
)
def test_an_unreadable_config_is_a_clear_error_for_every_reader(tmp_path, content, error):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    for load in (runtime_config.load, lambda p: runtime_config.Loader(p).load()):
        with pytest.raises(RuntimeConfigError, match=error):
            load(str(path))
    assert runtime_config.read(str(path)) is None
    paths = Paths(state_dir=str(tmp_path), runtime_dir=str(tmp_path))
    assert daemon_control._drain_timeout(paths) == DRAIN_TIMEOUT


def test_writing_the_config_the_file_holds_again_changes_nothing_with_a_delta_carrying_entries(tmp_path):
    path = tmp_path / "config.json"
    tenants = many(3)
    odd = dataclasses.replace(tenants[1], tenant_id='z\u00e9\U0001f600"\\')  # escaped on the way out
    paths = Paths(state_dir=str(tmp_path), runtime_dir=str(tmp_path))
    manifest = Manifest(1, tuple(tenants), DaemonSettings())
    runtime_config.write(runtime_config.render(manifest, paths), str(path))
    config = runtime_config.render(dataclasses.replace(manifest, tenants=(tenants[0], odd)), paths)
    assert runtime_config.write(config, str(path)) is True
    written = path.read_bytes()
    assert json.loads(written)["delta"]["changed"]["t1"]["tenant_id"] == odd.tenant_id
    assert runtime_config.write(config, str(path)) is False  # nsproxy-apply reports no change
    assert path.read_bytes() == written
