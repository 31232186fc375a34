"""A store wrapper that behaves as an S3-compatible server which ignores ``If-None-Match``: a conditional
put overwrites whatever is there and reports success."""

from __future__ import annotations

from cbtbackup.repo.forwarding_store import ForwardingStore


class IgnoresConditionalWrites(ForwardingStore):
    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.inner.put(key, data)
        return True
