"""The S3 servers the tests run against: moto's threaded server (a mock of AWS) and Ceph's RADOS Gateway
(a real server, from tests/servers/ceph-cluster, whose cluster also serves the RBD tests). Each is started
once per test session; a test that asks for ``s3_server`` runs once on each, its id naming the server
(``[moto]``, ``[rgw]``).

RGW is reused when ``CBTBACKUP_TEST_RGW_ENDPOINT`` (and ``CBTBACKUP_TEST_RGW_KEYS=ACCESS:SECRET``) name a
running one, as .ci/run does (``CBTBACKUP_TEST_RGW_UNAVAILABLE`` carries its line when it could not start
one); otherwise the fixture starts its own cluster and stops it at the end. Where
Ceph cannot start, the RGW cases skip with the script's one line.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CLUSTER_SCRIPT = Path(__file__).with_name("ceph-cluster")


@dataclasses.dataclass(frozen=True)
class S3Server:
    name: str  # "moto" or "rgw"
    endpoint: str
    access_key: str
    secret_key: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Server("moto", f"http://127.0.0.1:{port}", "testing", "testing")
    server.stop()


@dataclasses.dataclass(frozen=True)
class CephCluster:
    conf: str  # its ceph.conf: the RBD tests' cluster
    rgw: S3Server


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster | str]:
    """The one-node Ceph cluster of the whole session (RGW and RBD), or the one line that says why none
    could start."""
    if os.environ.get("CBTBACKUP_TEST_RGW_UNAVAILABLE"):
        yield os.environ["CBTBACKUP_TEST_RGW_UNAVAILABLE"]
        return
    endpoint = os.environ.get("CBTBACKUP_TEST_RGW_ENDPOINT")
    if endpoint:
        access, _, secret = os.environ.get("CBTBACKUP_TEST_RGW_KEYS", "testkey:testsecret").partition(":")
        yield CephCluster(os.environ.get("CBTBACKUP_TEST_CEPH_CONF", os.environ.get("CEPH_CONF", "")),
                          S3Server("rgw", endpoint, access, secret))
        return
    where = Path(tempfile.mkdtemp(prefix="cbt-ceph-"))
    port = free_port()
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(where / "cluster"), str(port)],
                             capture_output=True, text=True, env={**os.environ, "CEPH_MON_PORT": str(free_port())})
    try:
        if started.returncode != 0:
            lines = started.stderr.strip().splitlines()
            yield f"Ceph cannot start here: {lines[-1] if lines else 'exit ' + str(started.returncode)}"
        else:
            yield CephCluster(str(where / "cluster" / "ceph.conf"),
                              S3Server("rgw", f"http://127.0.0.1:{port}", "testkey", "testsecret"))
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(where / "cluster")], capture_output=True)
        where.rmdir()


@pytest.fixture(scope="session")
def rgw_server(ceph_cluster: CephCluster | str) -> S3Server | str:
    """The cluster's RGW, or the one line that says why none could start."""
    return ceph_cluster if isinstance(ceph_cluster, str) else ceph_cluster.rgw


@pytest.fixture(scope="session", params=["moto", "rgw"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server | str = request.getfixturevalue(f"{request.param}_server")
    if isinstance(server, str):
        pytest.skip(server)
    return server
