"""What a write-only host keeps of its own backups, since it cannot read them back from the repository.

An incremental needs its parent: the CBT checkpoint, the source and the size it was taken at, and the
resolved map (which stored chunk holds every byte of the image). With a write-only key the host cannot open
a manifest, so it keeps, per chain, a record of its newest backup: that manifest, its resolved map, the
digest of the sealed manifest object it put, and the sample of blocks the next backup checks the tracking
with (``pipeline/tracking_check.py``).

Records live in one file per chain in a directory beside the key file (``<key file>.state/``), mode 0600,
sealed to the host: AES-256-GCM under a key derived from the key file's host secret, with the repository's
id and the chain's name as associated data. The first line of each file, not secret, names the repository
and the key, so a record of another repository is refused with one line instead of being trusted.

A record is used only while the repository still holds that manifest byte for byte as it was put (one GET
and a digest; every rewrite seals anew with a random salt): ``forget`` and ``repack`` rewrite manifests,
after which the record no longer describes the chain. A missing, stale or unreadable record makes the next
backup one that reads the whole source and stores the chunks the repository lacks — never
one that trusts what it cannot prove.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import blake3
import zstandard

from cbtbackup.errors import UsageError, os_error
from cbtbackup.repo.write_only import WriteOnlyKey

FORMAT = "cbtbackup-host-state"
SUFFIX = ".state"
SampledBlock = tuple[int, int, bytes]  # (offset, length, chunk id of its bytes)


class ForeignHostStateError(UsageError):
    """The host's state directory holds records of another repository."""


@dataclasses.dataclass(frozen=True)
class HostRecord:
    """The newest backup of a chain as this host wrote it."""

    ref_key: str
    version: str  # "blake3:<hex>" of the sealed manifest object as this host put it
    manifest: bytes  # Manifest.to_bytes()
    resolved: bytes  # ExtentMap.to_bytes() of its resolved map
    sample: tuple[SampledBlock, ...] = ()


class HostState:
    def __init__(self, key: WriteOnlyKey, repository_id: str) -> None:
        self.directory = key.state_dir
        self.repository_id = repository_id
        self._key_id = key.id
        self._secret = blake3.blake3(key.host_secret, derive_key_context="cbtbackup 2026-12 host state").digest()

    def _path(self, chain: str) -> Path:
        return self.directory / (chain + SUFFIX)

    def _header(self) -> bytes:
        return json.dumps({"format": FORMAT, "version": 1, "repository": self.repository_id,
                           "key": self._key_id}, sort_keys=True).encode()

    def check_repository(self, location: str) -> None:
        """Refuse a state directory whose records are another repository's (one line, nothing changed)."""
        try:
            names = sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return
        except OSError as e:
            raise os_error(e, f"cannot read the host state {self.directory}") from None
        for path in names:
            header = _first_line(path)
            if header is not None and header.get("repository") not in (None, self.repository_id):
                raise ForeignHostStateError(
                    f"the host state {self.directory} holds records of repository {header.get('repository')}, not "
                    f"of {location} ({self.repository_id}): move it away (the next backup of each chain then "
                    "reads everything) or use the key file of that repository")

    def load(self, chain: str) -> tuple[HostRecord | None, str]:
        """This host's record of ``chain``, or None and why there is none usable."""
        path = self._path(chain)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, f"this host keeps no record of chain {chain!r} ({path} is missing)"
        except OSError as e:
            return None, f"this host's record of chain {chain!r} cannot be read ({e.strerror})"
        header, _, sealed = raw.partition(b"\n")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            plain = AESGCM(self._secret).decrypt(sealed[:12], sealed[12:], self._associated(chain, header))
            fields: dict[str, Any] = json.loads(zstandard.ZstdDecompressor().decompress(plain))
            record = HostRecord(str(fields["ref"]), str(fields["version"]), bytes.fromhex(fields["manifest"]),
                                bytes.fromhex(fields["resolved"]),
                                tuple((int(o), int(n), bytes.fromhex(d)) for o, n, d in fields["sample"]))
        except (InvalidTag, ValueError, KeyError, TypeError, zstandard.ZstdError):
            return None, (f"this host's record of chain {chain!r} ({path}) does not open with this key (damaged, or "
                          "written with another key)")
        return record, ""

    def save(self, chain: str, record: HostRecord) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        body = json.dumps({"ref": record.ref_key, "version": record.version, "manifest": record.manifest.hex(),
                           "resolved": record.resolved.hex(),
                           "sample": [[o, n, d.hex()] for o, n, d in record.sample]}).encode()
        header = self._header()
        nonce = os.urandom(12)
        sealed = AESGCM(self._secret).encrypt(nonce, zstandard.ZstdCompressor(level=3).compress(body),
                                              self._associated(chain, header))
        path = self._path(chain)
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, header + b"\n" + nonce + sealed)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            raise os_error(e, f"cannot write the host state {path}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _associated(self, chain: str, header: bytes) -> bytes:
        return b"cbtbackup host state\0" + self.repository_id.encode() + b"\0" + chain.encode() + b"\0" + header


def _first_line(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            fields = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    # A damaged first line is not refused here: the record then fails to open, and the chain starts anew.
    return fields if isinstance(fields, dict) and fields.get("format") == FORMAT else None
