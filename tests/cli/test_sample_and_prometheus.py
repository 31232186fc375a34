"""``verify --read-data-subset`` and ``stats --prometheus`` through the command line, on a real repository."""

from __future__ import annotations

import math
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def two_chains(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none", "--chunk-size", "64KiB").code == 0
    for name in ("db", "web"):
        image = make_image(2 * MiB, name=f"{name}.img")
        assert cli("full", "-r", repo, image, "--name", name).code == 0
    return repo


def stored_chunks(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "chunks").rglob("*") if p.is_file())


def test_a_percentage_reads_that_part_of_the_chunks(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = two_chains(cli, make_image, tmp_path)
    everything = cli("verify", "-r", repo, "--json").json
    assert everything["chunks_checked"] == len(stored_chunks(repo))  # random images: no chunk is shared
    quarter = cli("verify", "-r", repo, "--read-data-subset", "25%", "--json")
    assert quarter.code == 0
    assert quarter.json["chunks_checked"] == math.ceil(everything["chunks_checked"] / 4)
    by_size = cli("verify", "-r", repo, "--read-data-subset", "256KiB", "--json")  # four 64 KiB chunks
    assert by_size.code == 0 and by_size.json["chunks_checked"] == 4


def test_a_full_sample_finds_the_damage_a_full_verify_finds(cli: RunCli, make_image: MakeImage,
                                                             tmp_path: Path) -> None:
    repo = two_chains(cli, make_image, tmp_path)
    victim = stored_chunks(repo)[0]
    victim.write_bytes(os.urandom(victim.stat().st_size))
    result = cli("verify", "-r", repo, "--read-data-subset", "100%")
    assert result.code == 5
    [line] = [line for line in result.out.splitlines() if line.startswith("quarantined ")]
    assert victim.name in line  # the damaged chunk, by name
    assert not victim.exists() and (repo / "quarantine").is_dir()  # moved aside, as a full verify does


def test_bad_samples_are_one_line(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = two_chains(cli, make_image, tmp_path)
    cli("verify", "-r", repo, "--read-data-subset", "0%").assert_one_line_error(2, "more than 0%")
    cli("verify", "-r", repo, "--read-data-subset", "150%").assert_one_line_error(2, "at most 100%")
    cli("verify", "-r", repo, "--read-data-subset", "lots").assert_one_line_error(2, "lots")


def test_stats_in_prometheus_format_match_the_json(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = two_chains(cli, make_image, tmp_path)
    as_json = cli("stats", "-r", repo, "--json").json
    exposition = cli("stats", "-r", repo, "--prometheus")
    assert exposition.code == 0
    samples = {(s.name, s.labels.get("chain")): s.value
               for family in text_string_to_metric_families(exposition.out) for s in family.samples}
    for chain in as_json["chains"]:
        name = chain["name"]
        assert samples["cbtbackup_chain_backups", name] == chain["backups"] == 1
        assert samples["cbtbackup_chain_logical_bytes", name] == chain["logical_bytes"] == 2 * MiB
        assert samples["cbtbackup_chain_stored_bytes", name] == chain["stored_bytes"] > 0
        assert samples["cbtbackup_chain_dedup_ratio", name] == chain["dedup_ratio"]
        assert samples["cbtbackup_chain_last_backup_timestamp_seconds", name] == chain["newest"]
    assert {name for name, chain in samples if chain} == {"cbtbackup_chain_backups", "cbtbackup_chain_logical_bytes",
                                                          "cbtbackup_chain_stored_bytes", "cbtbackup_chain_dedup_ratio",
                                                          "cbtbackup_chain_last_backup_timestamp_seconds"}
    assert samples["cbtbackup_repository_chunks", None] == as_json["chunks"] == len(stored_chunks(repo))
    assert samples["cbtbackup_repository_stored_bytes", None] == as_json["total"]["stored_bytes"]
    assert samples["cbtbackup_repository_unreadable_manifests", None] == 0
    cli("stats", "-r", repo, "--prometheus", "--json").assert_one_line_error(2, "choose one")
