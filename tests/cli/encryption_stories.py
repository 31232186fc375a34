"""Encryption stories shared by the local and the S3 tests: the same tampering against any repository."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from tests.conftest import MakeImage, RunCli, stored_manifests

MiB = 1 << 20
MARKER = b"TOP-SECRET-MARKER-7f3a"


class Objects(Protocol):
    """Raw access to a repository's stored objects, around cbtbackup."""

    def keys(self, prefix: str) -> list[str]: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...
    def snapshot(self) -> Any: ...
    def restore(self, saved: Any) -> None: ...


def marker_image(path: Path, size: int = 8 * MiB) -> Path:
    path.write_bytes((MARKER * (size // len(MARKER) + 1))[:size])
    return path


def no_marker_under(root: Path) -> None:
    for path in root.rglob("*"):
        assert MARKER not in path.name.encode(), path
        if path.is_file():
            assert MARKER not in path.read_bytes(), f"{path} holds the marker in the clear"


def tamper_story(cli: RunCli, repo: tuple[str, ...], make_image: MakeImage, tmp_path: Path, objects: Objects) -> None:
    """Each tampering, from a pristine repository: detected, named, and never restored as wrong bytes."""
    assert cli("init", *repo).code == 0
    image = make_image(4 * MiB)
    older = cli("full", *repo, image, "--json").json
    with open(image, "r+b") as f:
        f.write(os.urandom(MiB))
    newer = cli("full", *repo, image, "--json").json
    second = tmp_path / "second-passphrase"
    second.write_text("another passphrase\n")
    assert cli("key", "add", *repo, "--new-password-file", second).code == 0
    pristine = objects.snapshot()
    out = tmp_path / "out.img"

    def restore_fails(backup_id: str, *fragments: str) -> None:
        cli("restore", *repo, backup_id, out).assert_one_line_error(5, *fragments)
        assert not out.exists()

    # A flipped bit in a chunk.
    chunk = objects.keys("chunks/")[0]
    raw = bytearray(objects.get(chunk))
    raw[len(raw) // 2] ^= 0x10
    objects.put(chunk, bytes(raw))
    digest = chunk.rsplit("/", 1)[-1]
    bad = cli("verify", *repo)
    bad.assert_one_line_error(5, digest, "fails authentication")
    objects.restore(pristine)
    objects.put(chunk, bytes(raw))
    users = [b for b in (older["id"], newer["id"]) if b in bad.err]
    restore_fails(users[0], digest)
    objects.restore(pristine)

    # Two chunk objects swapped.
    a, b = objects.keys("chunks/")[:2]
    raw_a, raw_b = objects.get(a), objects.get(b)
    objects.put(a, raw_b)
    objects.put(b, raw_a)
    swapped = cli("verify", *repo)
    swapped.assert_one_line_error(5, a.rsplit("/", 1)[-1], b.rsplit("/", 1)[-1])
    objects.restore(pristine)

    # An older manifest under a newer one's name.
    by_id = stored_manifests(repo)
    objects.put(by_id[newer["id"]], objects.get(by_id[older["id"]]))
    restore_fails(newer["id"], "fails authentication")
    replayed = cli("verify", *repo, "--json")
    assert replayed.code == 5 and [k for k in replayed.json["unreadable_manifests"] if k.endswith(f"_{newer['id']}")]
    assert cli("restore", *repo, older["id"], out).code == 0  # the other backup is untouched
    out.unlink()
    objects.restore(pristine)

    # An edited key slot: its passphrase no longer opens it, and verify (opened by the other) names it.
    slots = cli("key", "list", *repo, "--json").json["keys"]
    first = "keys/" + min(slots, key=lambda s: s["created"])["id"]
    fields = json.loads(objects.get(first))
    fields["kdf"]["iterations"] = 1  # a cheaper KDF, as an attacker would like
    objects.put(first, json.dumps(fields).encode())
    cli("list", *repo).assert_one_line_error(12, "damaged or edited", first)
    named = cli("verify", *repo, "--password-file", second, "--json")
    assert named.code == 5 and named.json["damaged_keys"] == [first]
    objects.restore(pristine)

    # An edited config: its copy, which the MAC proves, opens the repository, with one line; both edited,
    # nothing opens it.
    config = json.loads(objects.get("config"))
    config["chunk_size"] = config["chunk_size"] * 2
    objects.put("config", json.dumps(config).encode())
    copied = cli("list", *repo)
    assert copied.code == 0 and "config object is damaged" in copied.err and "config was changed" in copied.err
    objects.put("config.copy", json.dumps(config).encode())
    cli("list", *repo).assert_one_line_error(5, "config was changed")
    config["chunk_size"] //= 2
    config["encryption"] = "none"
    objects.put("config", json.dumps(config).encode())
    objects.put("config.copy", json.dumps(config).encode())
    cli("list", *repo).assert_one_line_error(5, "config was changed")
    objects.restore(pristine)

    # Untouched, everything is whole.
    assert cli("verify", *repo).code == 0
    assert cli("restore", *repo, newer["id"], out).code == 0
    assert out.read_bytes() == image.read_bytes()
