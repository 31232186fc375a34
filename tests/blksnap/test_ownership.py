"""Snapshots a killed run leaves behind: neither module build removes them, so the next run does — only its own."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from cbtbackup.engine.blksnap import ownership
from cbtbackup.engine.blksnap.kernel import BlksnapModule
from cbtbackup.engine.providers import BlksnapProvider
from tests.blksnap.conftest import MakeDevice
from tests.blksnap.simulator import KernelSimulator
from tests.conftest import RunCli

MiB = 1 << 20


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path, "--encryption", "none").code == 0
    return path


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def leave_snapshot(sim: KernelSimulator, device: str, storage: Path, owner: ownership.Owner | None) -> uuid.UUID:
    """What a run killed with SIGKILL after its take leaves: a taken snapshot holding ``device``."""
    module = BlksnapModule.open(sim.env)
    dev = module.device(device)
    try:
        dev.attach_filter()
        snap_id = module.snapshot_create(str(storage), 16 * MiB)
        if owner is not None:
            ownership.record(sim.env.run_dir, snap_id, owner)
        dev.snapshot_add(snap_id)
        module.snapshot_take(snap_id)
        return snap_id
    finally:
        dev.close()
        module.close()


def test_a_killed_runs_snapshot_is_shown_and_then_destroyed_by_the_next_run(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    dev = make_device()
    left = leave_snapshot(simulator, dev, tmp_path, ownership.Owner(dead_pid(), 12345, (dev,)))
    status = cli("blksnap", "status", "--json").json
    assert status["snapshots"] == [{"id": str(left), "owner": {"pid": status["snapshots"][0]["owner"]["pid"],
                                                               "devices": [dev], "running": False}}]
    assert "killed: the next backup destroys it" in cli("blksnap", "status").out
    result = cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", tmp_path)
    assert result.code == 0, result.err
    assert f"destroyed snapshot {left} left by a cbtbackup run that was killed" in result.err
    assert simulator.snapshots == {} and left in simulator.destroyed
    assert cli("blksnap", "status", "--json").json["snapshots"] == []
    assert list(Path(simulator.env.run_dir).iterdir()) == []  # no record left either


def test_a_running_backups_or_another_programs_snapshot_is_left_alone(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    mine, foreign = make_device(), make_device()
    running = leave_snapshot(simulator, mine, tmp_path, ownership.Owner.me([mine]))  # this very process: alive
    other = leave_snapshot(simulator, foreign, tmp_path, None)  # no record: Veeam Agent's, say
    cli("full", "-r", repo, foreign, "--provider", "blksnap", "--diff-storage", tmp_path).assert_one_line_error(
        4, "it is in another snapshot")
    assert set(simulator.snapshots) == {running, other}
    lines = cli("blksnap", "status").out
    assert f"snapshot {other}: not cbtbackup's" in lines and f"cbtbackup pid {os.getpid()}" in lines
    assert "running" in lines


def test_a_fifo_is_refused_as_difference_storage(
    cli: RunCli, repo: Path, make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    """The real module's CREATE would block forever on a FIFO with no writer; it is never sent."""
    dev = make_device()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cli("full", "-r", repo, dev, "--provider", "blksnap", "--diff-storage", fifo).assert_one_line_error(
        2, "must be a directory, a regular file or a block device")
    assert "SNAPSHOT_CREATE" not in simulator.requests


class Stopped(Exception):
    pass


def test_sigterm_during_create_or_destroy_loses_track_of_nothing(
    make_device: MakeDevice, simulator: KernelSimulator, tmp_path: Path
) -> None:
    """SIGTERM that lands as CREATE returns is held until the snapshot is recorded, then unwinds and destroys it;
    one that lands as DESTROY returns is held until the record is gone."""
    dev = make_device()

    def stop(_signum: int, _frame: object) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        simulator.after["SNAPSHOT_CREATE"] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped):
            BlksnapProvider([dev], str(tmp_path), 16 * MiB).open_group()
        assert simulator.snapshots == {} and len(simulator.destroyed) == 1
        assert list(Path(simulator.env.run_dir).iterdir()) == []
        group = BlksnapProvider([dev], str(tmp_path), 16 * MiB).open_group()
        simulator.after["SNAPSHOT_DESTROY"] = lambda: os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped):
            group.close()
        assert simulator.snapshots == {} and list(Path(simulator.env.run_dir).iterdir()) == []
    finally:
        signal.signal(signal.SIGTERM, previous)
