"""Restores into RBD images (new, rewritten, onto a stale copy, refused while in use, nothing left by a
failure) and what a user gets for bad input: one line, a documented exit code, nothing changed."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.engine.rbd.cluster import bindings
from tests.conftest import RunCli
from tests.rbd.conftest import POOL, Image, MiB, documented_backup_role, read_image, remove_image


def names(ioctx: Any) -> list[str]:
    _, rbd = bindings()
    return list(rbd.RBD().list(ioctx))


def test_restore_into_new_existing_and_stale_images(cli: RunCli, repo: Path, make_rbd: Any, ioctx: Any,
                                                    tmp_path: Path) -> None:
    source: Image = make_rbd(16 * MiB)
    source.write(MiB, os.urandom(5 * MiB))
    first = cli("full", "-r", repo, source.source, "--json").json["id"]
    want_first = source.content()
    source.write(10 * MiB, os.urandom(MiB))
    source.discard(MiB, MiB)
    second = cli("incr", "-r", repo, source.source, "--json").json["id"]
    want_second = source.content()
    target = f"{source.name}-restore"
    spec = f"rbd:{POOL}/{target}"
    try:
        assert cli("restore", "-r", repo, first, spec).code == 0
        assert read_image(ioctx, target) == want_first
        cli("restore", "-r", repo, second, spec).assert_one_line_error(4, "--force")
        assert read_image(ioctx, target) == want_first
        _, rbd = bindings()
        with rbd.Image(ioctx, target) as in_use:  # another client holds a watch: a VM, rbd map
            in_use.write(b"x", 0)
            cli("restore", "-r", repo, second, spec, "--force").assert_one_line_error(4, "in use")
            cli("restore", "-r", repo, second, spec, "--onto-existing").assert_one_line_error(4, "in use")
        with rbd.Image(ioctx, target) as image:
            image.write(want_first[:1], 0)
            image.resize(20 * MiB)  # a copy of another size is brought to the backup's
        assert cli("restore", "-r", repo, second, spec, "--force").code == 0
        assert read_image(ioctx, target) == want_second
        with rbd.Image(ioctx, target) as image:  # a stale copy: the first backup plus a stray write
            image.write(want_first, 0)
            image.write(os.urandom(4096), 14 * MiB)
        onto = cli("restore", "-r", repo, second, spec, "--onto-existing", "--json")
        assert onto.code == 0, onto.err
        assert read_image(ioctx, target) == want_second
        assert onto.json["bytes_written"] < 3 * MiB  # only what differs
        assert onto.json["bytes_read_from_target"] == 16 * MiB
    finally:
        remove_image(ioctx, target)


def test_a_restore_that_fails_leaves_no_image(cli: RunCli, repo: Path, make_rbd: Any, ioctx: Any) -> None:
    source: Image = make_rbd(8 * MiB)
    source.write(0, os.urandom(4 * MiB))
    backup = cli("full", "-r", repo, source.source, "--json").json["id"]
    victim = next(p for p in (repo / "chunks").rglob("*") if p.is_file())
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1
    victim.write_bytes(bytes(raw))
    target = f"{source.name}-never"
    cli("restore", "-r", repo, backup, f"rbd:{POOL}/{target}").assert_one_line_error(5, "corrupt")
    assert not [n for n in names(ioctx) if n.startswith(target)]  # neither the target nor a partial one


def test_bad_input_is_one_line(cli: RunCli, repo: Path, make_rbd: Any, tmp_path: Path) -> None:
    image: Image = make_rbd(4 * MiB)
    cli("full", "-r", repo, "rbd:nopool/x").assert_one_line_error(3, "pool 'nopool' does not exist")
    cli("full", "-r", repo, f"rbd:{POOL}/no-such-image").assert_one_line_error(3, "no such RBD image")
    cli("full", "-r", repo, "rbd:justone").assert_one_line_error(2, "rbd:POOL/IMAGE")
    cli("full", "-r", repo, f"rbd:{POOL}/{image.name}@snap").assert_one_line_error(2, "not a snapshot")
    cli("full", "-r", repo, image.source, "--provider", "scan").assert_one_line_error(2, "rbd provider")
    cli("full", "-r", repo, image.source, "--ceph-conf", tmp_path / "none.conf").assert_one_line_error(3)
    cli("restore", "-r", repo, "latest", f"rbd:{POOL}/x", "--format", "qcow2").assert_one_line_error(2)
    cli("full", "-r", repo, image.source, image.source).assert_one_line_error(2, "named twice")
    assert image.snapshots() == []  # nothing of ours left behind by the refusals


def test_a_cluster_that_does_not_answer_is_one_line_within_the_timeout(cli: RunCli, repo: Path,
                                                                       tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections and never says a word
    conf = tmp_path / "silent.conf"
    conf.write_text(f"[global]\nmon host = v1:127.0.0.1:{silent.getsockname()[1]}\n"
                    "auth client required = none\n")
    started = time.monotonic()
    try:
        result = cli("full", "-r", repo, f"rbd:{POOL}/x", "--ceph-conf", conf, "--ceph-timeout", "3")
    finally:
        silent.close()
    result.assert_one_line_error(7, "did not answer")
    assert time.monotonic() - started < 20


def test_the_documented_backup_role_backs_up_and_cannot_write_images(cli: RunCli, repo: Path, make_rbd: Any,
                                                                     ioctx: Any, ceph_conf: str,
                                                                     tmp_path: Path) -> None:
    with documented_backup_role(ceph_conf, tmp_path) as (user, keyring):
        role = ("--ceph-id", user, "--keyring", keyring)
        image: Image = make_rbd(8 * MiB)
        image.write(0, os.urandom(2 * MiB))
        assert cli("full", "-r", repo, image.source, *role).code == 0
        image.write(5 * MiB, os.urandom(65536))
        incr = cli("incr", "-r", repo, image.source, *role, "--json")
        assert incr.code == 0 and incr.json["method"] == "cbt", incr.err
        assert [s for s in image.snapshots() if s.startswith("cbtbackup-")] != []
        assert cli("restore", "-r", repo, incr.json["id"], tmp_path / "r.img").code == 0
        assert (tmp_path / "r.img").read_bytes() == image.content()
        # The role cannot change an image: a restore onto one is refused, and so is a plain write.
        before = image.content()
        cli("restore", "-r", repo, incr.json["id"], image.source, "--force", *role).assert_one_line_error(
            8, "permission")
        rados, rbd = bindings()
        handle = rados.Rados(conffile=ceph_conf, rados_id=user, conf={"keyring": str(keyring)})
        handle.connect(timeout=30)
        try:
            with handle.open_ioctx(POOL) as io, rbd.Image(io, image.name) as as_role, \
                    pytest.raises(rbd.PermissionError):
                as_role.write(b"x" * 4096, 0)
        finally:
            handle.shutdown()
        assert image.content() == before
