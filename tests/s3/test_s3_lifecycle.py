"""The life cycle against moto's S3 server over HTTP: forget, synthesize and prune; locks by conditional
put; and a manifest cache that another host's forget made stale."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cli.lifecycle_stories import forget_and_synthesize_story, write
from tests.conftest import MakeImage, RunCli
from tests.s3.fault_proxy import FaultProxy

MiB = 1 << 20


def test_forget_synthesize_prune_over_s3(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    repo = ("-r", f"s3://{bucket}/life", "--endpoint-url", proxy.url)
    assert cli("init", *repo).code == 0
    proxy.reset_counts()
    forget_and_synthesize_story(cli, repo, make_image(48 * MiB), tmp_path)
    # Prune asks for list pages and deletes; it never looks at chunks one by one.
    proxy.reset_counts()
    assert cli("prune", *repo).code == 0
    assert proxy.counts["HEAD"] == 0
    assert all("/chunks/" not in p for p in proxy.get_paths)


def test_another_hosts_forget_leaves_this_cache_stale_but_harmless(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy,
    monkeypatch: object,
) -> None:
    repo = ("-r", f"s3://{bucket}/two-hosts", "--endpoint-url", proxy.url)
    assert cli("init", *repo).code == 0
    image = make_image(8 * MiB)
    cli("track", image)
    ids = [cli("full", *repo, image, "--json").json["id"]]
    for i in range(3):
        write(image, i * MiB, MiB)
        ids.append(cli("incr", *repo, image, "--json").json["id"])
    expected = image.read_bytes()
    cache = tmp_path / "cache"  # this host's cache now holds every manifest of the chain
    saved = tmp_path / "cache-before"
    shutil.copytree(cache, saved)
    assert cli("forget", *repo, ids[1], ids[2]).code == 0  # "another host": its own cache
    assert cli("prune", *repo).code == 0
    shutil.rmtree(cache)
    shutil.copytree(saved, cache)  # back to the stale copies
    out = tmp_path / "out.img"
    assert cli("restore", *repo, ids[3], out).code == 0
    assert out.read_bytes() == expected
    assert cli("verify", *repo).code == 0
    write(image, 5 * MiB, MiB)
    nxt = cli("incr", *repo, image, "--json")
    assert nxt.code == 0 and nxt.json["parent"] == ids[3]
