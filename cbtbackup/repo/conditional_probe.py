"""Does a store honour conditional creation? One probe object, asked for twice.

S3 servers differ: AWS (since 2024) and Ceph RGW answer ``If-None-Match: *`` on PUT with 412 when the key
exists; older S3-compatible servers ignore the header and overwrite. Nothing in a repository depends on
the answer: lock objects and key slots have random 64-bit ids, and a lock is held only after a listing
shows no older conflicting lock (write, then look — the protocol restic's locks use), manifests have
unique names and are never rewritten except by ``forget`` under an exclusive lock. ``init`` still asks, so
that the user learns what the server does, and so that a test can prove the protocol holds either way.
"""

from __future__ import annotations

import os

from cbtbackup.repo.store import Store

PROBE_PREFIX = "probe/"


def honours_conditional_create(store: Store) -> bool:
    """Create a probe object, try to create it again, remove it: True if the second try was refused."""
    key = PROBE_PREFIX + os.urandom(8).hex()
    try:
        store.put_if_absent(key, b"first")
        return not store.put_if_absent(key, b"second")
    finally:
        store.delete(key)
