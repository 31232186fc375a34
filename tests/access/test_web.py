"""``cbtbackup web`` in a real headless browser (Debian's chromium, driven by Playwright) over a real
repository: the chains are listed, a stale chain is flagged, a chain's plot has one point per backup and
series; the page writes nothing and holds no lock a backup would wait for; off loopback it needs a token."""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.access.conftest import Started
from tests.conftest import MakeImage, RunCli

CHROMIUM = "/usr/bin/chromium"
# What a sandboxed root CI needs; the network flags keep Chromium from calling home on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
TOKEN = "0123456789abcdef-web-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed here (apt install chromium)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what a reader must leave alone."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file()}


@pytest.fixture
def repository(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> tuple[Path, list[str]]:
    """Chain "old": one backup, eight seconds older than chain "fresh": a full and two incrementals."""
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    old = make_image(2 << 20, name="old.img")
    assert cli("full", "-r", repo, old, "--name", "old").code == 0
    time.sleep(8)
    fresh = make_image(4 << 20, name="fresh.img")
    rng = random.Random(3)
    ids = []
    for kind in ("full", "incr", "incr"):
        with open(fresh, "r+b") as f:
            for _ in range(rng.randint(1, 6)):
                f.seek(rng.randrange((4 << 20) - 65536))
                f.write(rng.randbytes(65536))
        result = cli(kind, "-r", repo, fresh, "--name", "fresh", "--json")
        assert result.code == 0, result.err
        ids.append(result.json["id"])
    return repo, ids


def test_the_page_lists_chains_flags_the_stale_one_and_plots_each_backup(
        repository: tuple[Path, list[str]], browser: Browser, foreground: Started, cli: RunCli,
        make_image: MakeImage) -> None:
    repo, fresh_ids = repository
    before = tree(repo)
    port = free_port()
    foreground("web", "-r", repo, "--listen", f"127.0.0.1:{port}", "--stale-after", "6s",
               ready=lambda: listening(port))
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    rows = page.locator("tr.chain")
    assert rows.count() == 2
    assert page.locator("tr.chain").evaluate_all("rows => rows.map(r => r.dataset.chain)") == ["fresh", "old"]
    old, fresh = page.locator('tr[data-chain="old"]'), page.locator('tr[data-chain="fresh"]')
    assert "stale" in (old.get_attribute("class") or "") and old.locator(".badge").inner_text() == "stale"
    assert "stale" not in (fresh.get_attribute("class") or "") and fresh.locator(".badge").count() == 0
    assert fresh.locator("td").nth(3).inner_text() == "3"  # backups
    assert "1 stale" in page.locator("p").first.inner_text()

    page.locator('tr[data-chain="fresh"] a').click()
    page.wait_for_url(f"http://127.0.0.1:{port}/chain/fresh")
    for series in ("stored", "changed"):
        points = page.locator(f"svg.plot circle.point.{series}")
        assert points.count() == 3, series
        assert points.evaluate_all("ps => ps.map(p => p.dataset.id)") == fresh_ids
    # The points go left to right in time, and the stored series rises where more was stored.
    xs = page.locator("svg.plot circle.point.stored").evaluate_all("ps => ps.map(p => +p.getAttribute('cx'))")
    assert xs == sorted(xs) and xs[0] < xs[-1]
    assert page.locator("tr.backup").count() == 3

    # The API behind it says the same.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chains") as answer:
        doc = json.load(answer)
    assert doc["stale"] == ["old"] and [c["name"] for c in doc["chains"]] == ["fresh", "old"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chains/fresh") as answer:
        assert [b["id"] for b in json.load(answer)["backup_list"]] == fresh_ids
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
        assert 'cbtbackup_chain_backups{chain="fresh"} 3.0' in answer.read().decode()

    # Read-only: nothing in the repository changed, writes are refused, and a backup runs beside it.
    assert tree(repo) == before
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 405
    image = make_image(1 << 20, name="beside.img")
    assert cli("full", "-r", repo, image, "--name", "beside", "--wait-lock", "0").code == 0


def test_a_token_off_loopback_and_on_it(repository: tuple[Path, list[str]], browser: Browser,
                                        foreground: Started, cli: RunCli, tmp_path: Path) -> None:
    repo, _ = repository
    port = free_port()
    refused = cli("web", "-r", repo, "--listen", f"0.0.0.0:{port}")
    refused.assert_one_line_error(2, "is not loopback", "token")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    foreground("web", "-r", repo, "--listen", f"0.0.0.0:{port}", "--token-file", token_file,
               ready=lambda: listening(port))
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chains")
    assert denied.value.code == 401
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/chains",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as answer:
        assert len(json.load(answer)["chains"]) == 2
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")  # once: a cookie carries it from there
    assert page.url == f"http://127.0.0.1:{port}/"
    assert page.locator("tr.chain").count() == 2
    page.goto(f"http://127.0.0.1:{port}/chain/old")
    assert page.locator("svg.plot circle.point.stored").count() == 1
    wrong = browser.new_page()
    assert wrong.goto(f"http://127.0.0.1:{port}/?token=not-the-token").status == 401  # type: ignore[union-attr]

