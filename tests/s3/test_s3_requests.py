"""How many requests a backup to S3 makes, and that answering "is this chunk there?" from a listing never
skips a chunk the bucket does not hold (moto's server over HTTP, requests counted by the proxy)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cbtbackup.repo import chunk_presence
from cbtbackup.repo.chunk_presence import ChunkPresence
from cbtbackup.repo.s3_store import S3Options, S3Store
from tests.conftest import MakeImage, RunCli
from tests.s3.conftest import s3_client
from tests.s3.fault_proxy import FaultProxy

MiB = 1 << 20


def chunk_key(digest: bytes) -> str:
    return f"chunks/{digest.hex()[:2]}/{digest.hex()}"


def test_a_full_to_a_new_repository_makes_about_one_request_per_stored_chunk(
    cli: RunCli, make_image: MakeImage, bucket: str, proxy: FaultProxy
) -> None:
    repo = f"s3://{bucket}/count"
    ep = ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "64KiB", "--encryption", "none").code == 0
    image = make_image(32 * MiB)  # 512 chunks of random data
    proxy.reset_counts()
    full = cli("full", "-r", repo, *ep, image, "--json")
    assert full.code == 0, full.err
    stored = full.json["chunks_new"]
    assert stored == 512
    assert proxy.counts["HEAD"] == 0  # no chunk was looked up one by one
    # Besides the chunks: the config, the key slots, the locks, the chain (and its legacy name), one page of
    # chunk keys, the lock taken, checked and dropped, the manifest and the chain's head.
    assert sum(proxy.counts.values()) <= 1.05 * stored, "\n".join(proxy.get_paths)


def test_a_killed_run_is_resumed_without_looking_up_or_uploading_its_chunks_again(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    """What a killed run stored is in the listing: the rerun neither HEADs nor PUTs it."""
    repo = f"s3://{bucket}/resume"
    ep = ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "64KiB", "--encryption", "none").code == 0
    image = make_image(4 * MiB)
    first = cli("full", "-r", repo, *ep, image, "--json")
    assert first.code == 0
    manifest = next(o["Key"] for o in s3_client(proxy.url).list_objects_v2(
        Bucket=bucket, Prefix="resume/backups/")["Contents"])
    s3_client(proxy.url).delete_object(Bucket=bucket, Key=manifest)  # as if killed before its commit
    s3_client(proxy.url).delete_object(Bucket=bucket, Key=manifest.replace("backups/", "heads/").rsplit("/", 1)[0])
    proxy.reset_counts()
    rerun = cli("full", "-r", repo, *ep, image, "--json")
    assert rerun.code == 0, rerun.err
    assert rerun.json["chunks_new"] == 0 and rerun.json["chunks_reused"] == 64
    assert proxy.counts["HEAD"] == 0
    assert not [p for p in proxy.put_paths if "/chunks/" in p]
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, *ep, "latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()


def test_chunks_gone_from_the_bucket_are_stored_again(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    """The chain's manifests say a chunk exists; the bucket lost it: the next full trusts the bucket."""
    repo = f"s3://{bucket}/lost"
    ep = ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "64KiB", "--encryption", "none").code == 0
    image = make_image(4 * MiB)
    assert cli("full", "-r", repo, *ep, image).code == 0
    client = s3_client(proxy.url)
    chunks = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="lost/chunks/")["Contents"]]
    gone = chunks[::7]
    for key in gone:
        client.delete_object(Bucket=bucket, Key=key)
    proxy.reset_counts()
    again = cli("full", "-r", repo, *ep, image, "--json")
    assert again.code == 0, again.err
    assert sorted(p.split("?")[0].split("/lost/", 1)[1] for p in proxy.put_paths if "/chunks/" in p) == \
        sorted(k.split("lost/", 1)[1] for k in gone)
    assert cli("verify", "-r", repo, *ep, "--json").code == 0
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, *ep, "latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()


@pytest.fixture
def store_with_chunks(bucket: str, s3_endpoint: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
                      ) -> tuple[S3Store, set[bytes]]:
    """75 chunk keys spread evenly over the hash space (empty objects: only their names matter here),
    listed 25 to a page."""
    monkeypatch.setattr(chunk_presence, "PAGE", 25)
    digests = {(i * (1 << 256) // 75 + 12345).to_bytes(32, "big") for i in range(75)}
    client = s3_client(s3_endpoint)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda d: client.put_object(Bucket=bucket, Key="presence/" + chunk_key(d), Body=b""), digests))
    return S3Store(f"s3://{bucket}/presence", S3Options(endpoint_url=proxy.url)), digests


def presence_for(store: S3Store, expected_lookups: int, asked: list[bytes], max_listed: int = 10**6) -> ChunkPresence:
    def ask(digest: bytes) -> bool:
        asked.append(digest)
        return store.stat(chunk_key(digest)) is not None
    return chunk_presence.chunk_presence(store, "chunks/", ask, chunk_key, expected_lookups, max_listed)


def test_a_listing_is_read_whole_when_it_costs_fewer_requests_than_it_saves(
    store_with_chunks: tuple[S3Store, set[bytes]], proxy: FaultProxy
) -> None:
    store, digests = store_with_chunks
    asked: list[bytes] = []
    presence = presence_for(store, expected_lookups=5, asked=asked)  # two pages to go, fewer than 5 / 2
    assert presence.complete and presence.listed == 75
    assert proxy.counts["GET"] in (3, 4)  # three pages of 25 (and an empty fourth if S3 said "more")
    absent = os.urandom(32)
    assert all(presence.has(d) for d in digests) and not presence.has(absent)
    assert asked == []


def test_a_listing_that_would_cost_more_than_it_saves_stops_and_the_rest_is_asked(
    store_with_chunks: tuple[S3Store, set[bytes]], proxy: FaultProxy
) -> None:
    store, digests = store_with_chunks
    asked: list[bytes] = []
    # A third of the hash space in the first page: two pages to go, more than half of 3 lookups.
    presence = presence_for(store, expected_lookups=3, asked=asked)
    assert not presence.complete and presence.listed == 25
    assert proxy.counts["GET"] == 1
    listed_up_to = sorted(chunk_key(d) for d in digests)[24]
    for d in digests:  # every chunk the bucket holds is found: from the listing or by asking
        assert presence.has(d)
    past = [d for d in digests if chunk_key(d) > listed_up_to]
    assert sorted(asked) == sorted(past)
    # What the listing covered and did not hold is absent without a request; beyond it, one is made.
    asked.clear()
    assert not presence.has(bytes(32)) and asked == []
    assert not presence.has(b"\xff" * 32) and asked == [b"\xff" * 32]


def test_a_listing_keeps_at_most_its_cap_and_asks_for_the_rest(
    store_with_chunks: tuple[S3Store, set[bytes]]
) -> None:
    store, digests = store_with_chunks
    asked: list[bytes] = []
    presence = presence_for(store, expected_lookups=10**6, asked=asked, max_listed=40)
    assert not presence.complete and presence.listed == 50  # the cap is checked page by page
    assert all(presence.has(d) for d in digests)
    assert len(asked) == 25


def test_a_local_store_is_never_listed(tmp_path: Path) -> None:
    from cbtbackup.repo.local_store import LocalStore

    store = LocalStore(tmp_path / "repo")
    store.put(chunk_key(b"\x01" * 32), b"x")
    asked: list[bytes] = []

    def ask(digest: bytes) -> bool:
        asked.append(digest)
        return store.stat(chunk_key(digest)) is not None

    presence = chunk_presence.chunk_presence(store, "chunks/", ask, chunk_key, 10**6)
    assert presence.listing_requests == 0
    assert presence.has(b"\x01" * 32) and asked == [b"\x01" * 32]


def listed_prefixes(proxy: FaultProxy) -> list[str]:
    return [parse_qs(urlsplit(p).query)["prefix"][0] for p in proxy.get_paths if "prefix=" in p]


def test_one_chains_commands_do_not_read_the_other_chains(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a bucket many hosts share, `list --name`, `restore NAME@latest` and `verify ID` cost the same
    whatever the number of other chains: they list and read that chain alone."""
    repo, ep = f"s3://{bucket}/fleet", ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "64KiB", "--encryption", "none").code == 0
    ids = {}
    for name in ("alpha", "beta", "gamma"):
        image = make_image(MiB)
        ids[name] = cli("full", "-r", repo, *ep, image, "--name", name, "--json").json["id"]
    monkeypatch.setenv("CBTBACKUP_CACHE_DIR", str(tmp_path / "fresh-cache"))

    proxy.reset_counts()
    listed = cli("list", "-r", repo, *ep, "--name", "beta", "--json")
    assert [b["id"] for b in listed.json["backups"]] == [ids["beta"]]
    assert listed.json["backups"][0]["bytes_alone"] is None
    assert "fleet/backups/" not in listed_prefixes(proxy) and "fleet/backups/beta/" in listed_prefixes(proxy)
    assert not [p for p in proxy.get_paths if "backups/alpha" in p or "backups/gamma" in p]

    proxy.reset_counts()
    assert cli("restore", "-r", repo, *ep, "beta@latest", tmp_path / "beta.img").code == 0
    assert "fleet/backups/" not in listed_prefixes(proxy)

    proxy.reset_counts()  # beta's manifest is now in the cache: its id is found with one HEAD
    assert cli("verify", "-r", repo, *ep, ids["beta"], "--json").json["ok"]
    assert "fleet/backups/" not in listed_prefixes(proxy) and proxy.counts["HEAD"] == 1

    # Another host removed it: the cached copy is not trusted, the id is looked up and not found.
    s3_client(proxy.url).delete_object(Bucket=bucket, Key=f"fleet/backups/beta/{listed.json['backups'][0]['stamp']}"
                                                           f"_{ids['beta']}")
    gone = cli("verify", "-r", repo, *ep, ids["beta"])
    gone.assert_one_line_error(3, f"no backup '{ids['beta']}'")
