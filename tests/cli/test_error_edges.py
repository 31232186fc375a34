"""The error edges a user meets: each its own class and exit code, one line, never exit 70."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbtbackup.errors import NameTooLongError, NotADirError, PermissionDeniedError, ReadOnlyError
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path).code == 0
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_a_read_only_target(cli: RunCli, repo: Path, make_image: MakeImage, read_only_dir: Path,
                            tmp_path: Path) -> None:
    backup_id = cli("full", "-r", repo, make_image(MiB), "--json").json["id"]
    cli("restore", "-r", repo, backup_id, read_only_dir / "out.img").assert_one_line_error(
        ReadOnlyError.exit_code, "Read-only file system")
    backing = tmp_path / "dev.img"
    backing.write_bytes(bytes(2 * MiB))
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        cli("restore", "-r", repo, backup_id, dev, "--force").assert_one_line_error(ReadOnlyError.exit_code, dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_permission_denied(repo: Path, tmp_path: Path) -> None:
    """Root without the capabilities that let it ignore file modes, as an unprivileged user would run."""
    secret = tmp_path / "secret.img"
    secret.write_bytes(os.urandom(MiB))
    os.chown(secret, 65534, 65534)
    os.chmod(secret, 0o600)
    caps = "-dac_override,-dac_read_search"
    done = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m",
                           "cbtbackup", "full", "-r", str(repo), str(secret)], capture_output=True, text=True)
    assert done.returncode == PermissionDeniedError.exit_code, done.stderr
    assert done.stderr.count("\n") == 1 and "Permission denied" in done.stderr


def test_a_state_directory_that_is_a_file(cli: RunCli, repo: Path, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(MiB)
    state = tmp_path / "state"
    state.write_text("a file")
    cli("track", image, "--state-dir", state).assert_one_line_error(NotADirError.exit_code, "not a directory")
    cli("full", "-r", repo, image, "--provider", "userspace", "--state-dir", state).assert_one_line_error(
        NotADirError.exit_code, "not a directory")
    assert state.read_text() == "a file"


def test_a_252_character_name(cli: RunCli, repo: Path, tmp_path: Path) -> None:
    image = tmp_path / ("n" * 248 + ".img")
    image.write_bytes(os.urandom(MiB))
    cli("track", image).assert_one_line_error(NameTooLongError.exit_code, "File name too long", "--state-dir")
    backup_id = cli("full", "-r", repo, image, "--json").json["id"]  # by scan: it works, and restores
    target = tmp_path / ("r" * 252)
    assert cli("restore", "-r", repo, backup_id, target).code == 0
    assert target.read_bytes() == image.read_bytes()
    cli("restore", "-r", repo, backup_id, tmp_path / ("x" * 256)).assert_one_line_error(
        NameTooLongError.exit_code)
    cli("full", "-r", repo, image, "--name", "c" * 252).assert_one_line_error(2, "at most 128")


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_a_fifo_or_character_device_is_refused_at_once(cli: RunCli, repo: Path, tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        source = tmp_path / "pipe"
        os.mkfifo(source)
    else:
        source = Path("/dev/zero")
    started = time.monotonic()
    cli("full", "-r", repo, source).assert_one_line_error(2, "FIFO" if kind == "fifo" else "character device")
    cli("track", source).assert_one_line_error(2, "not an image file or block device")
    assert time.monotonic() - started < 5


def test_json_failures_print_one_object(cli: RunCli, repo: Path, tmp_path: Path) -> None:
    failed = cli("restore", "-r", repo, "nothing", tmp_path / "x", "--json")
    assert failed.code == 3
    assert json.loads(failed.out) == {"error": failed.err.strip().removeprefix("cbtbackup: error: "),
                                      "exit_code": 3}
    usage = cli("full", "-r", repo, "--json")
    assert usage.code == 2 and json.loads(usage.out)["exit_code"] == 2


def test_sigterm_cleans_up_like_ctrl_c(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    image = make_image(512 * MiB, zeros=False)
    cli("track", image)
    child = subprocess.Popen([sys.executable, "-m", "cbtbackup", "full", "-r", str(repo), str(image)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list((repo / "chunks").glob("*/*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert err.strip().splitlines()[-1] == "cbtbackup: error: terminated"
    assert cli("list", "-r", repo, "--json").json["backups"] == []
    assert cli("incr", "-r", repo, image, "--json").code == 0  # the volume was released


def test_a_restore_killed_with_sigkill_leaves_nothing_behind(
    cli: RunCli, repo: Path, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image(384 * MiB)
    backup_id = cli("full", "-r", repo, image, "--provider", "scan", "--json").json["id"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    child = subprocess.Popen([sys.executable, "-m", "cbtbackup", "restore", "-r", str(repo), backup_id,
                              str(out_dir / "disk.img")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    writing = False
    while not writing and time.monotonic() < deadline and child.poll() is None:
        for fd in Path(f"/proc/{child.pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith(str(out_dir)) and os.stat(fd).st_size > 0:
                writing = True
        time.sleep(0.005)
    assert writing, "the restore never opened its target"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert list(out_dir.iterdir()) == []  # nothing, hidden or not, and no space held
    assert cli("restore", "-r", repo, backup_id, out_dir / "disk.img").code == 0
    assert list(out_dir.iterdir()) == [out_dir / "disk.img"]
    assert stat.S_ISREG(os.stat(out_dir / "disk.img").st_mode)


def test_init_under_a_regular_file_is_the_path_error(cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cli("init", "-r", tmp_path / "afile" / "sub").assert_one_line_error(NotADirError.exit_code, "Not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("value", ["-2", "0", "x"])
def test_synthetic_full_every_takes_a_positive_count(cli: RunCli, repo: Path, make_image: MakeImage,
                                                     value: str) -> None:
    image = make_image(MiB)
    assert cli("full", "-r", repo, image).code == 0
    cli("incr", "-r", repo, image, "--synthetic-full-every", value).assert_one_line_error(2, "synthetic-full-every")
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 1


@pytest.mark.parametrize("option, value", [("--wait-lock", ""), ("--since", ""), ("--diff-storage-limit", ""),
                                           ("--s3-timeout", "nan"), ("--ceph-timeout", "nan"), ("--as-of", "")])
def test_an_empty_or_not_a_number_value_is_refused_not_ignored(cli: RunCli, repo: Path, make_image: MakeImage,
                                                               option: str, value: str) -> None:
    image = make_image(MiB)
    assert cli("full", "-r", repo, image).code == 0
    result = cli("incr", "-r", repo, image, option, value)
    assert result.code != 0 and result.code != 70, (result.code, result.err)
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 1


HANGING_CLEANUP = """
import signal, sys, time
import cbtbackup.cli.app as app
signal.signal(signal.SIGINT, signal.SIG_DFL)
app.SIGTERM_GRACE = 1.0
if sys.argv[1] == "unhurried":
    app.unhurried_sigterm()
with app._sigterm_unwinds():
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        time.sleep(float(sys.argv[2]))  # a clean-up that takes this long
"""


@pytest.mark.parametrize("mode", ["watched", "unhurried"])
def test_a_clean_up_that_hangs_after_sigterm_ends_by_the_watchdog(mode: str) -> None:
    cleanup = "60" if mode == "watched" else "2"
    child = subprocess.Popen([sys.executable, "-c", HANGING_CLEANUP, mode, cleanup],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    took = time.monotonic() - started
    if mode == "watched":
        assert child.returncode == 143 and took < 10
        assert err.strip().splitlines() == ["cbtbackup: the clean-up did not end within 1 s of SIGTERM; leaving now",
                                            "cbtbackup: error: terminated"]
    else:  # a job's hooks are released under their own timeouts: its clean-up runs to its end
        assert took >= 2 and "leaving now" not in err
