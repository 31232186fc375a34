"""Private object names: what a reader of the bucket learns from keys of an encrypted repository.

The repository, the pipelines and the caches name objects by their *logical* keys —
``backups/<chain>/<stamp>_<id>``, ``heads/<chain>`` — which carry a chain's name (made from a host and a
source path) and each backup's time. In a repository whose config says ``"names": "private"`` the store
holds them under *physical* keys that carry neither:

- ``backups/<tag>/<leaf>`` and ``heads/<tag>``, where ``tag`` is the first 16 bytes (hex) of a keyed BLAKE3
  of the chain's name under the repository's names key, and ``leaf`` is the backup's time (microseconds)
  and id, one 16-byte block encrypted with AES-256 under a key derived from the names key and the chain's
  name. One block of a block cipher is a pseudorandom permutation, and every block is different (the id is
  random), so leaves are unique random strings to anyone without the key: no time, no order;
- ``quarantine/`` keeps the physical key of what it holds.

Keys of the version-1 form met under ``backups/`` or ``heads/`` (what an upgrade killed after its commit
leaves) are passed over by listings; ``verify`` reports them as stale and ``upgrade`` removes them.

Every other key (chunks, locks, key slots, config) says nothing and is the same in both layouts.

:class:`PrivateNamesStore` sits between the repository and its store and translates every call, so nothing
above it knows. Going from a physical key back needs the chain's name for its tag: the store learns it once
per tag and process, from the chain's head (or, without one, from one of the chain's manifests), both
sealed; a tag whose name nothing readable gives stays visible as ``backups/%<tag>/%<leaf>``, which no
listing of backups takes for one. Sealed objects are bound to their physical key (the associated data), so
an object renamed in the bucket fails to open.

A write-only key holds the names key: a host can name its own chains' objects, and can test a guessed chain
name against the tags (as it can test a guessed block against chunk ids); it cannot list names or times.
"""

from __future__ import annotations

import datetime
import json
import re
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import blake3

from cbtbackup.errors import CbtError, CorruptDataError, NotFoundError
from cbtbackup.repo.forwarding_store import ForwardingStore
from cbtbackup.repo.store import ListPage, ObjectInfo, Store

BACKUPS = "backups/"
HEADS = "heads/"
QUARANTINE = "quarantine/"
UNKNOWN = "%"  # marks a tag or leaf kept as it is in the store (never the start of a chain's name)
_STAMP = "%Y%m%dT%H%M%S%fZ"
_EPOCH = datetime.datetime(1970, 1, 1)
_LEAF_RE = re.compile(r"^[0-9a-f]{32}$")
_TAG_RE = re.compile(r"^[0-9a-f]{32}$")
_BLOCK = struct.Struct(">Q8s")
# Opens a sealed object stored under a physical key (the repository's sealer).
Opener = Callable[[str, bytes], bytes]


def _split_quarantine(key: str) -> tuple[str, str]:
    """``("quarantine/", the original key)`` of a quarantined object's key, ``("", key)`` of any other."""
    return (QUARANTINE, key[len(QUARANTINE):]) if key.startswith(QUARANTINE) else ("", key)


def in_private_layout(key: str) -> bool:
    """Whether a store's key of a manifest or head (quarantined or not) has the private form: anything else
    there is what an upgrade from version 1 left when it was killed (pipeline/upgrade.py removes it)."""
    rest = key.removeprefix(QUARANTINE)
    if rest.startswith(BACKUPS):
        tag, _, leaf = rest[len(BACKUPS):].partition("/")
        return bool(_TAG_RE.match(tag)) and "_" not in leaf
    if rest.startswith(HEADS):
        return bool(_TAG_RE.match(rest[len(HEADS):]))
    return True


class PrivateNames:
    """The two-way mapping between logical and physical keys, for one names key."""

    def __init__(self, names_key: bytes) -> None:
        if len(names_key) != 32:
            raise CorruptDataError("the repository's names key is missing (a write-only key file made before the "
                                   "repository's names became private: make a new one)")
        self._key = names_key
        self._ciphers: dict[str, object] = {}
        self._lock = threading.Lock()

    def tag(self, chain: str) -> str:
        return blake3.blake3(b"chain\0" + chain.encode(), key=self._key).digest()[:16].hex()

    def _cipher(self, chain: str) -> object:
        with self._lock:
            known = self._ciphers.get(chain)
        if known is None:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            leaf_key = blake3.blake3(b"leaf\0" + chain.encode(), key=self._key).digest()
            # ECB of one block, on blocks that never repeat: a keyed permutation, nothing more is asked of it.
            known = Cipher(algorithms.AES(leaf_key), modes.ECB())
            with self._lock:
                if len(self._ciphers) > 4096:
                    self._ciphers.clear()
                self._ciphers[chain] = known
        return known

    def leaf(self, chain: str, logical_leaf: str) -> str:
        """The physical leaf of ``<stamp>_<id>``; a leaf of another shape is kept as it is."""
        if logical_leaf.startswith(UNKNOWN):
            return logical_leaf[1:]
        stamp, _, ident = logical_leaf.partition("_")
        try:
            when = datetime.datetime.strptime(stamp, _STAMP) - _EPOCH
            micros = when // datetime.timedelta(microseconds=1)
            block = _BLOCK.pack(micros, bytes.fromhex(ident))
        except (ValueError, struct.error, OverflowError):
            return logical_leaf
        if len(ident) != 16:
            return logical_leaf
        encryptor = self._cipher(chain).encryptor()  # type: ignore[attr-defined]
        return bytes(encryptor.update(block) + encryptor.finalize()).hex()

    def logical_leaf(self, chain: str, leaf: str) -> str:
        if not _LEAF_RE.match(leaf):
            return UNKNOWN + leaf
        decryptor = self._cipher(chain).decryptor()  # type: ignore[attr-defined]
        micros, ident = _BLOCK.unpack(decryptor.update(bytes.fromhex(leaf)) + decryptor.finalize())
        try:
            when = _EPOCH + datetime.timedelta(microseconds=micros)
        except OverflowError:
            return UNKNOWN + leaf
        if not 2000 <= when.year <= 9999:  # not one this repository made (or another chain's leaf)
            return UNKNOWN + leaf
        return f"{when.strftime(_STAMP)}_{ident.hex()}"

    def physical(self, key: str) -> str:
        head, rest = _split_quarantine(key)
        if rest.startswith(BACKUPS):
            chain, slash, leaf = rest[len(BACKUPS):].partition("/")
            if not slash:
                return key
            if chain.startswith(UNKNOWN):  # kept as the store has it
                return f"{head}{BACKUPS}{chain[1:]}/{leaf.removeprefix(UNKNOWN)}"
            return f"{head}{BACKUPS}{self.tag(chain)}/{self.leaf(chain, leaf)}"
        if rest.startswith(HEADS) and len(rest) > len(HEADS):
            chain = rest[len(HEADS):]
            return f"{head}{HEADS}{chain[1:] if chain.startswith(UNKNOWN) else self.tag(chain)}"
        return key


class PrivateNamesStore(ForwardingStore):
    """A store whose callers use logical keys while the store beneath holds physical ones."""

    def __init__(self, inner: Store, names: PrivateNames, opener: Opener) -> None:
        super().__init__(inner)
        self.names = names
        self._open = opener
        self._chains: dict[str, str] = {}  # tag -> chain name, as learned
        self._lock = threading.Lock()

    # -- translation ---------------------------------------------------------------------------------------

    def learn(self, chain: str) -> None:
        """A chain this process names: its tag needs no lookup when met in a listing."""
        with self._lock:
            self._chains[self.names.tag(chain)] = chain

    def chain_of(self, tag: str) -> str | None:
        """The chain name behind ``tag``: from its head, else from one of its manifests (None if neither opens)."""
        with self._lock:
            if tag in self._chains:
                return self._chains[tag]
        found = self._from_head(tag) or self._from_manifest(tag)
        if found is not None and self.names.tag(found) == tag:
            with self._lock:
                self._chains[tag] = found
            return found
        return None

    def _from_head(self, tag: str) -> str | None:
        key = HEADS + tag
        try:
            logical = str(json.loads(self._open(key, self.inner.get(key)))["key"])
        except (NotFoundError, CorruptDataError, ValueError, KeyError, TypeError):
            return None
        chain, _, _ = logical[len(BACKUPS):].partition("/") if logical.startswith(BACKUPS) else ("", "", "")
        return chain or None

    def _from_manifest(self, tag: str) -> str | None:
        from cbtbackup.repo.manifest import Manifest

        for n, info in enumerate(self.inner.list(f"{BACKUPS}{tag}/")):
            if n >= 3:  # three unreadable manifests in a row: the chain is for verify to report, not for us
                break
            try:
                return Manifest.from_bytes(self._open(info.key, self.inner.get(info.key)), info.key).ref.name
            except (NotFoundError, CorruptDataError):
                continue
        return None

    def logical(self, key: str) -> str:
        head, rest = _split_quarantine(key)
        if rest.startswith(BACKUPS):
            tag, slash, leaf = rest[len(BACKUPS):].partition("/")
            if not slash:
                return key
            chain = self.chain_of(tag) if _TAG_RE.match(tag) else None
            if chain is None:
                return f"{head}{BACKUPS}{UNKNOWN}{tag}/{UNKNOWN}{leaf}"
            return f"{head}{BACKUPS}{chain}/{self.names.logical_leaf(chain, leaf)}"
        if rest.startswith(HEADS) and len(rest) > len(HEADS):
            tag = rest[len(HEADS):]
            chain = self.chain_of(tag) if _TAG_RE.match(tag) else None
            return f"{head}{HEADS}{chain if chain is not None else UNKNOWN + tag}"
        return key

    def _listing(self, prefix: str) -> tuple[str, bool]:
        """The physical prefix to list for a logical one, and whether what it lists needs translating."""
        head, rest = _split_quarantine(prefix)
        if rest.startswith(BACKUPS):
            chain, slash, _ = rest[len(BACKUPS):].partition("/")
            if slash:  # one chain: its tag's folder
                tag = chain[1:] if chain.startswith(UNKNOWN) else self.names.tag(chain)
                return f"{head}{BACKUPS}{tag}/", True
            return head + BACKUPS, True
        if rest.startswith(HEADS):
            # A prefix naming a chain lists that chain's head alone (a tag cannot be matched by a prefix).
            return (self.names.physical(head + rest) if len(rest) > len(HEADS) else head + HEADS), True
        spans = any(ns.startswith(prefix) for ns in (BACKUPS, HEADS, QUARANTINE + BACKUPS, QUARANTINE + HEADS))
        return prefix, spans

    # -- the store's calls ----------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        physical, translate = self._listing(prefix)
        if not translate:
            return self.inner.list(prefix)
        named = self._named_chain(prefix)
        if named:
            self.learn(named)  # its tag is known from the prefix: nothing to look up
        found = list(self.inner.list(physical))
        if not named:
            self._learn_tags(found)
        out = []
        for info in found:
            if not in_private_layout(info.key):
                continue  # a version-1 key a killed upgrade left: no backup, and not this layout's
            key = self.logical(info.key)
            if key.startswith(prefix):
                out.append(ObjectInfo(key, info.size, info.version, info.modified))
        return iter(sorted(out, key=lambda i: i.key))

    @staticmethod
    def _named_chain(prefix: str) -> str:
        """The chain a listing prefix names (``backups/<chain>/``, ``heads/<chain>``), or ''."""
        rest = prefix.removeprefix(QUARANTINE)
        if rest.startswith(BACKUPS):
            chain, slash, _ = rest[len(BACKUPS):].partition("/")
            return chain if slash and not chain.startswith(UNKNOWN) else ""
        if rest.startswith(HEADS):
            chain = rest[len(HEADS):]
            return chain if not chain.startswith(UNKNOWN) else ""
        return ""

    def _learn_tags(self, found: Sequence[ObjectInfo]) -> None:
        """Learn the chains behind the tags of a listing, in parallel on a remote store (a request each)."""
        tags = set()
        for info in found:
            rest = _split_quarantine(info.key)[1]
            for ns in (BACKUPS, HEADS):
                if rest.startswith(ns):
                    tag = rest[len(ns):].partition("/")[0]
                    if _TAG_RE.match(tag):
                        tags.add(tag)
        with self._lock:
            unknown = [t for t in tags if t not in self._chains]
        capabilities = self.inner.capabilities()
        if len(unknown) < 2 or not capabilities.remote:
            return
        with ThreadPoolExecutor(max_workers=min(16, capabilities.parallelism, len(unknown)),
                                thread_name_prefix="cbtbackup-names") as pool:
            for _ in pool.map(self._chain_or_none, unknown):
                pass

    def _chain_or_none(self, tag: str) -> str | None:
        try:
            return self.chain_of(tag)
        except CbtError:
            return None

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> ListPage:
        if not self._listing(prefix)[1]:
            return self.inner.list_page(prefix, start_after, limit)
        return Store.list_page(self, prefix, start_after, limit)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(self.names.physical(key), data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(self.names.physical(key), data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(self.names.physical(key), offset, length)

    def stat(self, key: str) -> ObjectInfo | None:
        info = self.inner.stat(self.names.physical(key))
        return None if info is None else ObjectInfo(key, info.size, info.version, info.modified)

    def delete(self, key: str) -> None:
        self.inner.delete(self.names.physical(key))

    def depend_on(self, key: str) -> None:
        self.inner.depend_on(self.names.physical(key))

    def retained_until(self, key: str) -> float:
        return self.inner.retained_until(self.names.physical(key))

    def extend_retention(self, key: str, until: float) -> None:
        self.inner.extend_retention(self.names.physical(key), until)
