"""The ledger's crash safety (ledger.py): intents recorded before a kernel change and settled by
what the kernel shows after an interrupted run (resolve), its records and their JSON, the file's
exact layout, and the lock's corner cases. Pure data, except the lock (real files in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsproxy_appliance import ledger
from nsproxy_appliance.errors import StateFileError
from nsproxy_appliance.identity import NetnsIdentity
from nsproxy_appliance.kernel.observed import LinkState, NetnsState
from nsproxy_appliance.ledger import Intent, IntentOp, Ledger, LedgerError, OwnedLink, OwnedNetns

ACME = "/run/netns/acme"
A = NetnsIdentity(4, 10, 7)  # the namespace an interrupted run created or deleted
OTHER = NetnsIdentity(4, 11, 8)  # another namespace now at the same path


def kernel(*states: NetnsState):
    """netns_at() of resolve(): the namespaces observed, missing for any other path."""
    by_path = {s.path: s for s in states}
    return lambda path: by_path.get(path, NetnsState(path))


def ns(identity: NetnsIdentity, path: str = ACME, **links: int) -> NetnsState:
    """The namespace at `path` with `identity` (the cookie apart, as observe reads it) and links by ifindex."""
    return NetnsState(
        path,
        identity=identity.with_cookie(None),
        cookie=identity.cookie,
        links={name: LinkState(name, index, "dummy", True, 1500) for name, index in links.items()},
    )


def intent(op: IntentOp, identity: NetnsIdentity = A, path: str = ACME, **link: object) -> Intent:
    return Intent(op, "acme", path, identity.dev, identity.ino, identity.cookie, **link)  # type: ignore[arg-type]


# -- resolve: namespaces -----------------------------------------------------------------------
def test_a_namespace_created_by_an_interrupted_run_is_adopted_with_its_identity():
    led = Ledger()
    led.intend(intent(IntentOp.CREATE_NETNS))
    notes = led.resolve(kernel(ns(A)))
    assert notes == ["adopted network namespace acme: created by an interrupted run"]
    assert led.namespaces == {"acme": OwnedNetns("acme", 4, 10, "acme", 7)}
    assert led.pending == []


@pytest.mark.parametrize("seen", [None, OTHER], ids=["missing", "another-namespace"])
def test_a_namespace_whose_creation_did_not_happen_is_not_adopted(seen):
    led = Ledger()
    led.intend(intent(IntentOp.CREATE_NETNS))
    assert led.resolve(kernel(*([ns(seen)] if seen else []))) == []
    assert led.namespaces == {} and led.pending == []


def test_a_namespace_that_cannot_be_observed_is_not_adopted():
    led = Ledger()
    led.intend(intent(IntentOp.CREATE_NETNS))
    broken = NetnsState(ACME, identity=A.with_cookie(None), cookie=7, error="not a network namespace")
    assert led.resolve(kernel(broken)) == []
    assert led.namespaces == {}


def test_a_namespace_deleted_by_an_interrupted_run_is_forgot_with_its_links():
    led = Ledger()
    led.own_netns("acme", A, "acme")
    led.own_link(ACME, A, "nsp0", "dummy", 5, "acme")
    led.intend(intent(IntentOp.DELETE_NETNS))
    assert led.resolve(kernel()) == ["forgot network namespace acme: deleted by an interrupted run"]
    assert led.namespaces == {} and led.links == {} and led.pending == []


def test_a_namespace_deleted_and_recreated_by_someone_else_is_forgot():
    led = Ledger()
    led.own_netns("acme", A, "acme")
    led.intend(intent(IntentOp.DELETE_NETNS))
    assert led.resolve(kernel(ns(OTHER))) == ["forgot network namespace acme: deleted by an interrupted run"]
    assert led.namespaces == {}


def test_a_namespace_whose_deletion_did_not_happen_stays_owned():
    led = Ledger()
    led.own_netns("acme", A, "acme")
    led.intend(intent(IntentOp.DELETE_NETNS))
    assert led.resolve(kernel(ns(A))) == []
    assert led.namespaces == {"acme": OwnedNetns("acme", 4, 10, "acme", 7)} and led.pending == []


def test_a_deletion_intent_never_disowns_another_namespace_of_that_name():
    led = Ledger()
    led.own_netns("acme", OTHER, "acme")  # owned since: the intent is about an older one
    led.intend(intent(IntentOp.DELETE_NETNS))
    assert led.resolve(kernel()) == []
    assert list(led.namespaces) == ["acme"]


# -- resolve: links ----------------------------------------------------------------------------
def test_a_link_created_by_an_interrupted_run_is_adopted():
    led = Ledger()
    led.own_netns("acme", A, "acme")
    led.intend(intent(IntentOp.ADD_LINK, link="nsp0", kind="dummy", ifindex=77))
    notes = led.resolve(kernel(ns(A, nsp0=77)))
    assert notes == ["adopted link acme/nsp0: created by an interrupted run"]
    assert led.links == {(ACME, "nsp0"): OwnedLink(ACME, 4, 10, "nsp0", "dummy", 77, "acme", 7)}
    assert led.pending == []


def test_a_link_intent_without_a_kind_is_adopted_with_an_empty_one_in_a_path_namespace():
    path = "/var/run/docker/netns/x"
    led = Ledger()
    led.intend(intent(IntentOp.ADD_LINK, path=path, link="nsp0", ifindex=77))
    assert led.resolve(kernel(ns(A, path, nsp0=77))) == [
        f"adopted link path:{path}/nsp0: created by an interrupted run"
    ]
    assert led.owned_link(path, "nsp0") == OwnedLink(path, 4, 10, "nsp0", "", 77, "acme", 7)


@pytest.mark.parametrize(
    "seen",
    [ns(A), ns(A, nsp0=78), ns(OTHER, nsp0=77), None],
    ids=["no-link", "other-ifindex", "other-namespace", "no-namespace"],
)
def test_a_link_whose_creation_did_not_happen_is_not_adopted(seen):
    led = Ledger()
    led.intend(intent(IntentOp.ADD_LINK, link="nsp0", kind="dummy", ifindex=77))
    assert led.resolve(kernel(*([seen] if seen else []))) == []
    assert led.links == {} and led.pending == []


def test_a_link_intent_without_an_ifindex_adopts_nothing():
    led = Ledger()
    led.intend(intent(IntentOp.ADD_LINK, link="nsp0", kind="dummy"))
    assert led.resolve(kernel(ns(A, nsp0=77))) == []
    assert led.links == {}


@pytest.mark.parametrize(
    "seen",
    [ns(A), ns(A, nsp0=78), ns(OTHER, nsp0=77), None],
    ids=["link-gone", "other-link-of-that-name", "other-namespace", "no-namespace"],
)
def test_a_link_deleted_by_an_interrupted_run_is_forgot(seen):
    led = Ledger()
    led.own_link(ACME, A, "nsp0", "dummy", 77, "acme")
    led.intend(intent(IntentOp.DELETE_LINK, link="nsp0", kind="dummy", ifindex=77))
    assert led.resolve(kernel(*([seen] if seen else []))) == ["forgot link acme/nsp0: deleted by an interrupted run"]
    assert led.links == {} and led.pending == []


def test_a_link_whose_deletion_did_not_happen_stays_owned():
    led = Ledger()
    led.own_link(ACME, A, "nsp0", "dummy", 77, "acme")
    led.intend(intent(IntentOp.DELETE_LINK, link="nsp0", kind="dummy", ifindex=77))
    assert led.resolve(kernel(ns(A, nsp0=77))) == []
    assert list(led.links) == [(ACME, "nsp0")] and led.pending == []


def test_a_link_deletion_of_a_link_not_owned_changes_nothing():
    led = Ledger()
    led.intend(intent(IntentOp.DELETE_LINK, link="nsp0", kind="dummy", ifindex=77))
    assert led.resolve(kernel()) == []
    assert led.links == {} and led.pending == []


def test_resolve_settles_every_intent_and_reports_in_order():
    led = Ledger()
    led.own_netns("old", NetnsIdentity(4, 20), "old")
    led.intend(intent(IntentOp.CREATE_NETNS))
    led.intend(Intent(IntentOp.DELETE_NETNS, "old", "/run/netns/old", 4, 20))
    led.intend(intent(IntentOp.ADD_LINK, link="nsp0", kind="dummy", ifindex=77))
    assert led.pending_paths() == [ACME, "/run/netns/old", ACME]
    assert led.resolve(kernel(ns(A, nsp0=77))) == [
        "adopted network namespace acme: created by an interrupted run",
        "forgot network namespace old: deleted by an interrupted run",
        "adopted link acme/nsp0: created by an interrupted run",
    ]
    assert led.pending == [] and led.pending_paths() == []
    assert list(led.namespaces) == ["acme"] and list(led.links) == [(ACME, "nsp0")]


# -- revisions (does the ledger need saving?) ----------------------------------------------------
def test_every_change_bumps_the_revision_and_settling_an_unknown_intent_does_not():
    led = Ledger()
    steps = [
        lambda: led.own_netns("acme", A, "acme"),
        lambda: led.own_link(ACME, A, "nsp0", "dummy", 5, "acme"),
        lambda: led.disown_link(ACME, "nsp0"),
        lambda: led.intend(intent(IntentOp.CREATE_NETNS)),
        lambda: led.settle(led.pending[0]),
        lambda: led.disown_netns("acme"),
    ]
    for n, step in enumerate(steps, start=1):
        step()
        assert led.revision == n
    led.settle(intent(IntentOp.CREATE_NETNS))  # not pending: nothing changes
    assert led.revision == len(steps)


def test_disowning_a_namespace_not_owned_keeps_the_links_of_its_path():
    led = Ledger()
    led.own_link(ACME, A, "nsp0", "dummy", 5, "acme")
    led.disown_netns("acme")
    assert list(led.links) == [(ACME, "nsp0")]


def test_owning_a_namespace_keeps_only_links_recorded_with_exactly_its_identity():
    led = Ledger()
    led.own_link(ACME, A, "nsp0", "dummy", 5, "acme")
    # the same inode without a cookie may be a dead namespace's reused inode: dropped
    led.own_link(ACME, A.with_cookie(None), "nsp1", "dummy", 6, "acme")
    led.own_link("/run/netns/acme2", OTHER, "nsp2", "dummy", 7, "acme")  # another path: untouched
    led.own_netns("acme", A.with_cookie(None), "acme", cookie=7)
    assert sorted(led.links) == [(ACME, "nsp0"), ("/run/netns/acme2", "nsp2")]
    assert led.namespaces["acme"] == OwnedNetns("acme", 4, 10, "acme", 7)


def test_an_explicit_cookie_wins_over_the_identity_s():
    led = Ledger()
    led.own_link(ACME, A, "nsp0", "dummy", 5, "acme", cookie=9)
    assert led.links[(ACME, "nsp0")].netns_identity == NetnsIdentity(4, 10, 9)


def test_owns_netns_compares_the_whole_identity():
    led = Ledger()
    led.own_netns("acme", A, "acme")
    assert led.owns_netns("acme", A)
    assert led.owns_netns("acme", A.with_cookie(None))  # a cookie unknown on one side is not held against it
    assert led.owns_netns("acme", A.with_cookie(None), cookie=7)
    assert not led.owns_netns("acme", A.with_cookie(None), cookie=8)
    assert not led.owns_netns("acme", None)
    assert not led.owns_netns("other", A)


# -- records and JSON --------------------------------------------------------------------------
def test_intents_describe_themselves():
    assert intent(IntentOp.CREATE_NETNS).describe() == "create netns network namespace acme (tenant acme)"
    assert (
        intent(IntentOp.DELETE_LINK, path="/x/y", link="nsp0").describe()
        == "delete link link path:/x/y/nsp0 (tenant acme)"
    )


def test_an_intent_round_trips_without_its_unknown_fields():
    link = intent(IntentOp.ADD_LINK, identity=NetnsIdentity(4, 10), link="nsp0", kind="dummy", ifindex=77)
    raw = link.to_json()
    assert raw == {
        "op": "add_link",
        "tenant": "acme",
        "netns_path": ACME,
        "dev": 4,
        "ino": 10,
        "link": "nsp0",
        "kind": "dummy",
        "ifindex": 77,
    }
    assert Intent.from_json(raw) == link and Intent.from_json(raw).op is IntentOp.ADD_LINK


def test_the_file_has_one_entry_per_line_in_a_stable_order(tmp_path):
    led = Ledger()
    led.own_netns("zeta", NetnsIdentity(4, 11), "zeta")
    led.own_netns("acme", A, "acme")
    led.own_link(ACME, A, "nsp1", "dummy", 6, "acme")
    led.own_link(ACME, A, "nsp0", "dummy", 5, "acme")
    led.intend(intent(IntentOp.DELETE_NETNS, identity=NetnsIdentity(4, 11), path="/run/netns/zeta"))
    path = tmp_path / "ledger.json"
    ledger.save(led, str(path))
    link = (
        '"kind": "dummy", "name": "nsp{}", "netns_cookie": 7, "netns_dev": 4, "netns_ino": 10, '
        '"netns_path": "/run/netns/acme", "tenant": "acme"'
    )
    assert path.read_text() == (
        '{"format": 1,\n'
        ' "namespaces": [\n'
        '  {"cookie": 7, "dev": 4, "ino": 10, "name": "acme", "tenant": "acme"},\n'
        '  {"cookie": null, "dev": 4, "ino": 11, "name": "zeta", "tenant": "zeta"}\n'
        " ],\n"
        ' "links": [\n'
        f'  {{"ifindex": 5, {link.format(0)}}},\n'
        f'  {{"ifindex": 6, {link.format(1)}}}\n'
        " ],\n"
        ' "pending": [\n'
        '  {"dev": 4, "ino": 11, "netns_path": "/run/netns/zeta", "op": "delete_netns", "tenant": "acme"}\n'
        " ]}\n"
    )
    assert ledger.load(str(path)) == led and ledger.load(str(path)).pending == led.pending


def test_an_empty_ledger_file(tmp_path):
    path = tmp_path / "ledger.json"
    ledger.save(Ledger(), str(path))
    assert path.read_text() == '{"format": 1,\n "namespaces": [],\n "links": [],\n "pending": []}\n'


def test_a_ledger_from_memory_says_so_when_refused():
    with pytest.raises(LedgerError, match=r"^<memory>: unknown ledger format 2 \(expected 1\)$"):
        Ledger.from_json({"format": 2})


def test_a_ledger_without_lists_is_empty():
    assert Ledger.from_json({"format": 1}) == Ledger() and Ledger.from_json({"format": 1}).pending == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "led.json: unknown ledger format 'list' (expected 1)"),
        ({}, "led.json: unknown ledger format None (expected 1)"),
        ({"format": "1"}, "led.json: unknown ledger format '1' (expected 1)"),
        ({"format": 1, "links": [{"name": "x"}]}, "led.json: malformed ledger entry: "),
        (
            {"format": 1, "pending": [{"op": "explode"}]},
            "led.json: malformed ledger entry: 'explode' is not a valid IntentOp",
        ),
        ({"format": 1, "namespaces": [{"dev": 1}]}, "led.json: malformed ledger entry: 'name'"),
    ],
)
def test_a_ledger_of_another_format_or_with_bad_entries_is_refused(data, message):
    with pytest.raises(LedgerError) as err:
        Ledger.from_json(data, "led.json")
    assert str(err.value).startswith(message)


def test_an_unreadable_ledger_names_the_file_and_the_reason(tmp_path):
    with pytest.raises(LedgerError) as err:
        ledger.load(str(tmp_path))  # a directory
    assert str(err.value) == f"cannot read ledger {tmp_path}: Is a directory"


def test_an_invalid_ledger_says_how_to_recover(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{")
    with pytest.raises(LedgerError) as err:
        ledger.load(str(path))
    assert str(err.value).startswith(f"{path}: not valid JSON (")
    assert str(err.value).endswith(
        "); it records what nsproxy owns, so nothing was changed. Restore it from backup, or remove it "
        "to make nsproxy treat every existing object as foreign."
    )


# -- the lock ----------------------------------------------------------------------------------
def test_the_holder_writes_its_pid_and_clears_it_on_release(tmp_path):
    lock = tmp_path / "state" / "apply.lock"
    with ledger.locked(str(lock), timeout=1.0):
        assert lock.read_text() == f"{os.getpid()}\n"
        assert oct(lock.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    assert lock.read_text() == ""
    with ledger.locked(str(lock), timeout=0.0):  # released: taken again at once
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_read_only_run_leaves_a_missing_state_directory_alone(tmp_path):
    lock = tmp_path / "state" / "apply.lock"
    with ledger.locked(str(lock), timeout=1.0, create=False):
        assert not lock.parent.exists()
    (tmp_path / "state").mkdir()
    with ledger.locked(str(lock), timeout=1.0, create=False):
        assert lock.read_text() == f"{os.getpid()}\n"  # the directory exists: locked as usual


def test_a_lock_file_that_cannot_be_opened_names_it(tmp_path):
    lock = tmp_path / "apply.lock"
    lock.mkdir()
    with pytest.raises(StateFileError) as err, ledger.locked(str(lock), timeout=1.0):
        pass
    assert str(err.value) == f"{lock}: open: Is a directory"


def test_the_holder_is_named_only_when_the_lock_file_holds_a_pid(tmp_path):
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b" 123\n")
        assert ledger._holder(fd) == "123"
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"12x", 0)
        assert ledger._holder(fd) == ""
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"\xff12", 0)  # not text: no holder named, and no error either
        assert ledger._holder(fd) == ""
    finally:
        os.close(fd)
    assert ledger._holder(fd) == ""  # closed: unreadable


def test_a_lock_held_elsewhere_without_a_pid_names_another_process(tmp_path):
    import fcntl

    lock = tmp_path / "apply.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: it conflicts like another process
        with pytest.raises(ledger.LockTimeout) as err, ledger.locked(str(lock), timeout=0.0):
            pass
    finally:
        os.close(fd)
    assert str(err.value) == (
        f"another nsproxy apply is running (another process holds {lock}); gave up after waiting 0 s (--lock-timeout)"
    )


def test_the_file_content_is_left_when_the_lock_cannot_be_taken(tmp_path):
    lock = tmp_path / "apply.lock"
    lock.write_text("4242\n")
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ledger.LockTimeout, match=r"\(process 4242 holds "), ledger.locked(str(lock), timeout=0.0):
            pass
    finally:
        os.close(fd)
    assert Path(lock).read_text() == "4242\n"


def test_a_ledger_file_of_another_format_is_named_in_the_refusal(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text('{"format": 2}')
    with pytest.raises(LedgerError) as err:
        ledger.load(str(path))
    assert str(err.value) == f"{path}: unknown ledger format 2 (expected 1)"


def test_disowning_a_link_not_owned_is_no_error():
    led = Ledger()
    led.disown_link(ACME, "nsp0")
    assert led.links == {} and led.revision == 1


def test_a_save_syncs_the_directory_too(tmp_path, monkeypatch):
    from nsproxy_appliance import atomicfile

    calls: list[dict[str, object]] = []
    real = atomicfile.write_text
    monkeypatch.setattr(atomicfile, "write_text", lambda p, text, **kw: calls.append(kw) or real(p, text, **kw))
    ledger.save(Ledger(), str(tmp_path / "ledger.json"))
    assert calls == [{"sync_directory": True}]  # the rename must survive a crash of the machine
