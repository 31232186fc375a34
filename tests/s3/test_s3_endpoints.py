"""Endpoints that are not what the user thinks: a real S3 server process that stops answering (stopped
with SIGSTOP: the kernel still accepts its connections), a web server that is not S3, bucket names that S3
rejects. Each ends in one line with its documented exit code, within bounded time, and changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunCli
from tests.s3.conftest import s3_client
from tests.servers.s3_servers import free_port


def wait_http(endpoint: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server ended"
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers, if only with an error
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{endpoint} did not come up")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*command: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        args = [a.replace("PORT", str(port)) for a in command]
        process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(endpoint, process)
        return endpoint, process

    yield start
    for process in started:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


def test_an_s3_server_that_stops_answering_ends_in_one_line(cli: RunCli, server_process: Any,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, process = server_process(sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "PORT")
    s3_client(endpoint).create_bucket(Bucket="stops")
    monkeypatch.setenv("CBTBACKUP_S3_ENDPOINT", endpoint)
    repo = "s3://stops/repo"
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    full = cli("full", "-r", repo, image, "--json")
    assert full.code == 0, full.err

    process.send_signal(signal.SIGSTOP)  # up, listening, silent: what a wedged server looks like
    for args in (("list",), ("incr", image), ("verify",)):
        started = time.monotonic()
        result = cli(*args, "-r", repo, "--s3-timeout", "0.5", "--json")
        waited = time.monotonic() - started
        result.assert_one_line_error(7, "did not answer")
        assert waited < 30, (args, waited)  # bounded: 4 tries of 0.5 s, not botocore's minutes
    process.send_signal(signal.SIGCONT)

    listed = cli("list", "-r", repo, "--json")
    assert listed.code == 0 and [b["id"] for b in listed.json["backups"]] == [full.json["id"]]


def test_a_web_server_that_is_not_s3_says_so(cli: RunCli, server_process: Any, tmp_path: Path) -> None:
    endpoint, _ = server_process(sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "PORT")
    for args in (("list",), ("init", "--encryption", "none")):
        result = cli(*args, "-r", "s3://bucket/repo", "--endpoint-url", endpoint, "--json")
        result.assert_one_line_error(7, "does not look like an S3 server")
        assert "create one with init" not in result.err
    assert os.listdir(tmp_path) == []  # the server's directory: nothing was written into it


@pytest.mark.parametrize("name", ["Bad_Bucket", "ab", "-abc", "a..b", "192.168.1.1", "UPPER", "bad bucket"])
def test_a_bucket_name_s3_rejects_is_called_invalid(cli: RunCli, s3_endpoint: str, name: str) -> None:
    for args in (("list",), ("init", "--encryption", "none")):
        result = cli(*args, "-r", f"s3://{name}/repo", "--endpoint-url", s3_endpoint)
        result.assert_one_line_error(2, "invalid bucket name")
    missing = cli("list", "-r", "s3://no-such-bucket-here/repo", "--endpoint-url", s3_endpoint)
    missing.assert_one_line_error(3, "does not exist")
