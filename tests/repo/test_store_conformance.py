"""What every Store backend must do; each backend in conftest.py runs all of it."""

from __future__ import annotations

import pytest

from cbtbackup.errors import NotFoundError
from cbtbackup.repo.store import Store


def test_put_get_stat(store: Store) -> None:
    store.put("a/b/c", b"hello world")
    assert store.get("a/b/c") == b"hello world"
    assert store.get("a/b/c", offset=6) == b"world"
    assert store.get("a/b/c", offset=2, length=3) == b"llo"
    info = store.stat("a/b/c")
    assert info is not None and info.size == 11
    assert store.stat("a/b/missing") is None


def test_put_replaces_whole(store: Store) -> None:
    store.put("k", b"1" * 1000)
    store.put("k", b"2")
    assert store.get("k") == b"2"


def test_missing_get_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get("nothing/here")


def test_list_by_prefix_in_key_order(store: Store) -> None:
    for key in ["backups/x/2", "backups/x/1", "backups/y/1", "chunks/ab/ab01", "config"]:
        store.put(key, key.encode())
    assert [o.key for o in store.list("backups/")] == ["backups/x/1", "backups/x/2", "backups/y/1"]
    assert [o.key for o in store.list("backups/x/")] == ["backups/x/1", "backups/x/2"]
    assert [o.key for o in store.list("")][-1] == "config"
    assert [o.size for o in store.list("chunks/")] == [len(b"chunks/ab/ab01")]
    assert list(store.list("nope/")) == []


def test_delete(store: Store) -> None:
    store.put("d/e", b"x")
    store.delete("d/e")
    assert store.stat("d/e") is None
    store.delete("d/e")  # deleting what is gone is fine


def test_sync_and_capabilities(store: Store) -> None:
    store.put("s", b"x")
    store.sync()
    caps = store.capabilities()
    assert caps.parallelism >= 1 and caps.description


def test_put_if_absent_creates_once(store: Store) -> None:
    assert store.put_if_absent("locks/one", b"first")
    assert not store.put_if_absent("locks/one", b"second")
    assert store.get("locks/one") == b"first"
    store.delete("locks/one")
    assert store.put_if_absent("locks/one", b"third")
    assert [o.key for o in store.list("locks/")] == ["locks/one"]


def test_put_if_absent_races_have_one_winner(store: Store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store.put_if_absent("race", str(i).encode()), range(16)))
    assert won.count(True) == 1
    assert store.get("race") == str(won.index(True)).encode()


def test_remove_incomplete_keeps_objects(store: Store) -> None:
    import time

    store.put("kept", b"x")
    assert store.remove_incomplete(time.time() + 10) >= 0
    assert store.get("kept") == b"x"
