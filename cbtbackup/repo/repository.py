"""A repository on top of any :class:`Store`: config, content-addressed chunks and chained manifests.

Keys (docs/format.md):

- ``config`` — JSON, the format version and the settings fixed at init;
- ``chunks/<first two hex digits>/<BLAKE3 hex>`` — chunk objects (:mod:`.chunk_codec`);
- ``backups/<name>/<stamp>_<id>`` — manifests (:mod:`.manifest`), one per backup, written last;
- ``heads/<name>`` — the key of the newest backup of a chain: a hint that saves listing, written after
  the manifest (if it is missing or stale the chain is listed; a stale head only makes the next
  incremental start from an older, still valid, backup);
- ``quarantine/<key>`` — objects that failed their checks, moved aside (:mod:`.quarantine`);
- ``locks/<id>`` — who writes what at the moment (:mod:`.locks`);
- ``keys/<id>`` — in an encrypted repository, the master key wrapped under each passphrase (:mod:`.keys`).

Every object but ``config`` and the key slots goes through the repository's sealer (:mod:`.sealing`): in an
encrypted repository it is authenticated and encrypted with its key as associated data, and chunk ids are
keyed digests.

The commit rule: every chunk a manifest names is put and synced before the manifest is put, so a
manifest that can be listed is whole. Everything here is shared by every backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import blake3

from cbtbackup.errors import BucketMissingError, CorruptDataError, NotFoundError, UsageError
from cbtbackup.model.extent_map import ExtentMap, resolve_chain
from cbtbackup.repo.chunk_codec import ChunkCodec, CorruptChunkError, MissingChunkError
from cbtbackup.repo.chunk_presence import ChunkPresence, chunk_presence
from cbtbackup.repo.conditional_probe import honours_conditional_create
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.host_state import HostRecord, HostState, SampledBlock
from cbtbackup.repo.key_file import KeyFile, write_key_file, write_write_only_key
from cbtbackup.repo.keys import KeySlots, UnlockError
from cbtbackup.repo.locks import Locker
from cbtbackup.repo.manifest import BACKUPS_PREFIX, BackupRef, Manifest
from cbtbackup.repo.manifest_cache import ManifestCache, default_cache_root
from cbtbackup.repo.object_names import PrivateNames, PrivateNamesStore
from cbtbackup.repo.quarantine import Quarantine
from cbtbackup.repo.sealing import AeadSealer, PlainSealer
from cbtbackup.repo.store import Store
from cbtbackup.repo.write_only import WriteOnlyError, WriteOnlyKey, WriteOnlySealer, config_digest, write_only_fields

# What unlocks an encrypted repository: a passphrase (through a key slot) or a key file; asked for only
# when the repository turns out to be encrypted.
Secret = str | KeyFile | WriteOnlyKey
Sealer = PlainSealer | AeadSealer | WriteOnlySealer
Passphrase = Secret | Callable[[], Secret | None] | None
CONFIG_KEY = "config"
# The config's second copy: one damaged object must not lose the repository. Written first at init (a
# repository exists once ``config`` does), read only when ``config`` fails its checks.
CONFIG_COPY_KEY = "config.copy"
CHUNKS_PREFIX = "chunks/"
HEADS_PREFIX = "heads/"


class AmbiguousBackupError(UsageError):
    """An id prefix matches several backups."""


class Repository:
    def __init__(
        self, store: Store, config: RepositoryConfig, location: str, cache: ManifestCache | None = None,
        sealer: Sealer | None = None, key_slot: str | None = None, master: bytes | None = None,
        host_state: HostState | None = None,
    ) -> None:
        self.config = config
        self.location = location
        self.sealer: Sealer = sealer or PlainSealer()
        # Private names: callers keep using logical keys; the store beneath holds keys that carry no chain
        # name and no time (object_names.py), and sealed objects are bound to those.
        self.private_names: PrivateNamesStore | None = None
        self.raw_store = store  # the store as it is, beneath any translation of names
        if config.private_names:
            names_key = self.sealer.names_key if not isinstance(self.sealer, PlainSealer) else b""
            self.private_names = PrivateNamesStore(store, PrivateNames(names_key), self.sealer.open)
            store = self.private_names
        self.store = store
        # False when opened with a write-only key: it backs up, its own chains' history comes from
        # ``host_state``, and every read of the repository's objects raises WriteOnlyError.
        self.can_read = self.sealer.can_read
        self.host_state = host_state
        self._own: dict[str, tuple[Manifest, ExtentMap, tuple[SampledBlock, ...]]] = {}  # key -> this host's record
        self._no_latest: dict[str, str] = {}  # chain -> why this host has no usable record of it
        self.chunk_id = self.sealer.chunk_id
        self.codec = ChunkCodec(config.compression, self.sealer.chunk_id)
        self.keys = KeySlots(store, config.id, master)
        self.key_slot = key_slot  # the slot this process unlocked with
        self._master = master  # in memory only, for adding key slots
        self._manifests: dict[str, tuple[str, Manifest]] = {}  # key -> (version, manifest)
        self._versions: dict[str, str] = {}  # key -> the version the store last listed
        self._lock = threading.Lock()
        if cache is None and store.capabilities().remote and self.can_read:
            cache = ManifestCache(default_cache_root(), config.id)
        self._cache = cache
        self.quarantine = Quarantine(store)
        self.locks = Locker(store, self.sealer.lock_sealer())
        self._heads: dict[str, BackupRef] = {}  # chains whose newest backup this process already found
        self.conditional_create: bool | None = None  # what init's probe found (None: not asked)
        self.config_raw = b""  # the config object's bytes this repository was opened with
        self.notes: list[str] = []  # what opening it found and the user should hear (a config's copy used)

    # -- opening -------------------------------------------------------------------------------------------

    @classmethod
    def init(cls, store: Store, location: str, config: RepositoryConfig, passphrase: str | None = None) -> Repository:
        if store.stat(CONFIG_KEY) is not None:
            try:
                RepositoryConfig.from_bytes(store.get(CONFIG_KEY), location)
            except CorruptDataError:
                pass  # somebody else's config: "not empty" below says it better
            else:
                raise UsageError(f"{location} is a repository already")
        if next(iter(store.list("")), None) is not None:
            raise UsageError(f"{location} is not empty; a new repository needs an empty place")
        retention = config.retention()
        if retention is not None:
            refusal = store.object_lock_refusal()
            if refusal:
                raise UsageError(refusal)
            store.apply_object_lock(retention)
        conditional = honours_conditional_create(store)
        sealer: Sealer = PlainSealer()
        slot = None
        master = None
        if config.encryption != "none":
            if not passphrase:
                raise UnlockError("an encrypted repository needs a passphrase (CBTBACKUP_PASSWORD, --password-file, "
                                  "--password-command, or a terminal)")
            master = os.urandom(32)
            sealer = AeadSealer(config.encryption, master)
            slot = KeySlots(store, config.id).add(passphrase, master)
        config = dataclasses.replace(config, mac=sealer.config_mac(config.body_for_mac()))
        raw = config.to_bytes()
        store.put(CONFIG_COPY_KEY, raw)
        store.put(CONFIG_KEY, raw)  # last: a repository exists once its config does
        store.sync()
        created = cls(store, config, location, sealer=sealer, key_slot=slot, master=master)
        created.config_raw = raw
        created.conditional_create = conditional
        return created

    @classmethod
    def open(cls, store: Store, location: str, passphrase: Passphrase = None) -> Repository:
        """Open a repository; an encrypted one is unlocked with ``passphrase`` (a string, or a function
        asked only then) and its config checked against the MAC made with its key. A config that fails its
        checks while its copy passes them opens with the copy, and says so in ``notes``."""
        try:
            raw = store.get(CONFIG_KEY)
        except BucketMissingError:
            raise
        except NotFoundError:
            raise NotFoundError(f"{location} is not a cbtbackup repository (no config); create one with init") from None
        asked: list[Secret | None] = []

        def given() -> Secret | None:  # asked once, whichever copy needs it
            if not asked:
                asked.append(passphrase() if callable(passphrase) else passphrase)
            return asked[0]

        try:
            repo = cls._open_with(store, location, raw, given)
        except (CorruptDataError, UnlockError) as first:  # a newer format version is neither: refused as it is
            copy = cls._config_copy(store)
            if copy is None or copy == raw:
                raise
            try:
                repo = cls._open_with(store, location, copy, given)
            except (CorruptDataError, UnlockError):
                raise first from None
            repo.notes.append(f"the config object is damaged ({first}); opened with its copy {CONFIG_COPY_KEY} "
                              "('cbtbackup verify --repair' writes it again)")
            raw = copy
        repo.config_raw = raw
        return repo

    @staticmethod
    def _config_copy(store: Store) -> bytes | None:
        try:
            return store.get(CONFIG_COPY_KEY)
        except NotFoundError:
            return None

    @classmethod
    def _open_with(cls, store: Store, location: str, raw: bytes,
                   passphrase: Callable[[], Secret | None]) -> Repository:
        config = RepositoryConfig.from_bytes(raw, location)
        retention = config.retention()
        if retention is not None:
            store.apply_object_lock(retention)  # a store that cannot lock says so here, before any write
        if config.encryption == "none":
            if next(iter(store.list("keys/")), None) is not None:
                raise CorruptDataError(f"{location}: the config says unencrypted, but the repository has key slots: "
                                       "its config was changed")
            if config.mac and config.mac != PlainSealer().config_mac(config.body_for_mac()):
                raise CorruptDataError(f"{location}: the config is damaged (its checksum does not match)")
            return cls(store, config, location)
        given = passphrase()
        if not given:
            raise UnlockError(f"{location} is encrypted: give its passphrase (CBTBACKUP_PASSWORD, --password-file, "
                              "--password-command, or a terminal) or a key file (--key-file)")
        if isinstance(given, WriteOnlyKey):
            return cls._open_write_only(store, location, config, given)
        slot: str | None = None
        if isinstance(given, KeyFile):  # the master key itself: no key slot, no Argon2id
            if given.repository != config.id:
                raise UnlockError(f"the key file {given.path} is for another repository, not {location}")
            master = given.master
        else:
            master, slot = KeySlots(store, config.id).unlock(given)
        sealer = AeadSealer(config.encryption, master)
        if sealer.config_mac(config.body_for_mac()) != config.mac:
            if isinstance(given, KeyFile):  # a key slot proves its key; a key file only names the repository
                raise UnlockError(f"the key file {given.path} does not open {location}: its key does not match "
                                  "the config's MAC (a wrong key, or a changed config)")
            raise CorruptDataError(f"{location}: the config was changed (its MAC does not match the key)")
        return cls(store, config, location, sealer=sealer, key_slot=slot, master=master)

    @classmethod
    def _open_write_only(cls, store: Store, location: str, config: RepositoryConfig, key: WriteOnlyKey) -> Repository:
        if key.repository != config.id:
            raise UnlockError(f"the write-only key file {key.path} is for another repository, not {location}")
        if key.cipher != config.encryption or key.config_digest != config_digest(config.body_for_mac()):
            raise CorruptDataError(f"{location}: the config is not the one the write-only key {key.path} was made "
                                   "for (it was changed)")
        state = HostState(key, config.id)
        state.check_repository(location)
        return cls(store, config, location, sealer=WriteOnlySealer(key), host_state=state)

    def reopened_with(self, config: RepositoryConfig) -> Repository:
        """This repository as it reads under ``config`` (an upgrade's next one, not yet written), with the same
        keys and the same store."""
        return Repository(self.raw_store, config, self.location, sealer=self.sealer, key_slot=self.key_slot,
                          master=self._master)

    def stored_key(self, key: str) -> str:
        """The key a sealed object is bound to: where the store holds it."""
        return self.private_names.names.physical(key) if self.private_names is not None else key

    def require_full_key(self, what: str) -> None:
        """Refuse ``what`` (one line, exit 13) before it starts when the repository was opened write-only."""
        if not self.can_read:
            raise WriteOnlyError(f"{what} needs to read the repository: a write-only key can only back up; give a "
                                 "passphrase or a full key file")

    def write_only_key(self, path: str, replace: bool = False) -> str:
        """Write a write-only key file for this repository (it must be encrypted and opened with a full key);
        the new key's id."""
        if not isinstance(self.sealer, AeadSealer):
            raise UsageError(f"{self.location} is not encrypted: anyone who can write to it can read it, so a "
                             "write-only key would protect nothing" if not self.sealer.encrypted else
                             "a write-only key cannot make another key")
        fields = write_only_fields(self.config.id, self.sealer, config_digest(self.config.body_for_mac()))
        write_write_only_key(path, fields, replace=replace)
        return str(fields["id"])

    def write_key_file(self, path: str, replace: bool = False) -> None:
        """Write this repository's master key to a key file (the repository must be encrypted and unlocked)."""
        self.require_full_key("exporting the key")
        if self._master is None:
            raise UsageError(f"{self.location} is not encrypted: it has no key to write")
        write_key_file(path, self.config.id, self._master, replace=replace)

    def add_key(self, passphrase: str) -> str:
        """A new key slot for ``passphrase`` (the repository must be encrypted and unlocked)."""
        self.require_full_key("adding a key")
        if self._master is None:
            raise UsageError(f"{self.location} is not encrypted: it has no keys")
        return self.keys.add(passphrase, self._master)

    def close(self) -> None:
        self.store.close()

    # -- chunks --------------------------------------------------------------------------------------------

    @staticmethod
    def chunk_key(digest: bytes) -> str:
        h = digest.hex()
        return f"{CHUNKS_PREFIX}{h[:2]}/{h}"

    def has_chunk(self, digest: bytes) -> bool:
        return self.store.stat(self.chunk_key(digest)) is not None

    def chunk_presence(self, expected_lookups: int) -> ChunkPresence:
        """What a backup about to look up about ``expected_lookups`` chunks asks instead of :meth:`has_chunk`:
        on a remote store, answered from one listing where that saves requests."""
        return chunk_presence(self.store, CHUNKS_PREFIX, self.has_chunk, self.chunk_key, expected_lookups)

    def depend_on_chunk(self, digest: bytes) -> None:
        """A backup will name a chunk it found stored rather than stored itself: make it durable too."""
        self.store.depend_on(self.chunk_key(digest))

    def put_chunk_object(self, digest: bytes, obj: bytes) -> None:
        key = self.chunk_key(digest)
        self.store.put(key, self.sealer.seal(self.stored_key(key), obj))

    def quarantined_chunks(self) -> set[bytes]:
        """Digests of chunks found corrupt or missing: a backup must not trust that they exist."""
        out = set()
        for key in self.quarantine.keys(CHUNKS_PREFIX):
            try:
                out.add(bytes.fromhex(key.rsplit("/", 1)[-1]))
            except ValueError:
                continue
        return out

    def quarantine_chunk(self, digest: bytes, missing: bool = False) -> str:
        """Move a bad chunk aside (or record a missing one); the next backup that reads its bytes stores it."""
        key = self.chunk_key(digest)
        return self.quarantine.mark_missing(key) if missing else self.quarantine.move_aside(key)

    def quarantine_manifest(self, ref: BackupRef) -> str:
        """Move an unreadable manifest aside, so listing and later backups no longer meet it."""
        with self._lock:
            self._manifests.pop(ref.key, None)
        if self._cache is not None:
            self._cache.forget(ref.key)
        return self.quarantine.move_aside(ref.key)

    def get_chunk(self, digest: bytes) -> bytes:
        """The verified plaintext of a chunk; ``CorruptChunkError`` or ``NotFoundError`` otherwise."""
        key = self.chunk_key(digest)
        try:
            raw = self.store.get(key)
        except NotFoundError:
            raise MissingChunkError(digest, self.location) from None
        try:
            plain = self.sealer.open(self.stored_key(key), raw)
        except CorruptDataError:
            raise CorruptChunkError(digest, "it fails authentication (changed, cut, or another chunk's object)") \
                from None
        return self.codec.decode(plain, digest)

    # -- manifests -----------------------------------------------------------------------------------------

    def save_manifest(self, manifest: Manifest, newest: bool = True, resolved: ExtentMap | None = None,
                      sample: tuple[SampledBlock, ...] = ()) -> None:
        """Commit a backup: make its chunks durable, then put the manifest, then make that durable; a
        backup that is its chain's ``newest`` becomes the chain's head. Opened write-only, the host then
        records the backup (its ``resolved`` map and the tracking ``sample`` for the next check) to build
        the next incremental on."""
        plain = manifest.to_bytes()
        raw = self.sealer.seal(self.stored_key(manifest.ref.key), plain)
        self.store.sync()
        self.store.put(manifest.ref.key, raw)
        self.store.sync()
        self._remember(manifest, raw)
        if newest:
            self._put_head(manifest.ref)
            with self._lock:
                self._heads[manifest.ref.name] = manifest.ref
        if self.host_state is not None:
            if resolved is None or not newest:
                raise WriteOnlyError("only a backup's newest manifest, with its resolved map, is written write-only")
            self.host_state.save(manifest.ref.name, HostRecord(manifest.ref.key, _sealed_digest(raw), plain,
                                                               resolved.to_bytes(), sample))
            self._own[manifest.ref.key] = (manifest, resolved, sample)

    def rewrite_manifest(self, manifest: Manifest) -> None:
        """Replace a manifest in place, atomically (``forget`` folding a removed parent into it)."""
        self.require_full_key("rewriting a backup")
        raw = self.sealer.seal(self.stored_key(manifest.ref.key), manifest.to_bytes())
        self.store.put(manifest.ref.key, raw)
        self.store.sync()
        self._remember(manifest, raw)

    def delete_manifest(self, ref: BackupRef) -> None:
        """Remove a backup's manifest, and point its chain's head at the newest backup left (if any)."""
        self.require_full_key("removing a backup")
        self.store.delete(ref.key)
        self.store.sync()
        with self._lock:
            self._manifests.pop(ref.key, None)
            self._heads.pop(ref.name, None)
        if self._cache is not None:
            self._cache.forget(ref.key)
        remaining = self.list_backups(ref.name)
        if remaining:
            self._put_head(remaining[-1])
        elif not self.locked:
            self.store.delete(HEADS_PREFIX + ref.name)

    @property
    def locked(self) -> bool:
        """Whether this repository's objects are immutable for a while after each write (S3 Object Lock)."""
        return bool(self.config.lock_mode)

    def head_of(self, name: str) -> BackupRef | None:
        """The backup ``heads/<name>`` names (None when there is no head); CorruptDataError when it cannot be
        read or names a backup of another chain."""
        key = HEADS_PREFIX + name
        try:
            raw = self.store.get(key)
        except NotFoundError:
            return None
        try:
            ref = BackupRef.from_key(str(json.loads(self.sealer.open(self.stored_key(key), raw))["key"]))
        except (CorruptDataError, ValueError, KeyError, TypeError):
            raise CorruptDataError(f"{key} cannot be read") from None
        if ref is None or ref.name != name:
            raise CorruptDataError(f"{key} names a backup of another chain")
        return ref

    def set_head(self, ref: BackupRef) -> None:
        """Point the chain's head at ``ref`` (verify --repair: a head rebuilt from the manifests)."""
        self._put_head(ref)
        with self._lock:
            self._heads[ref.name] = ref

    def _put_head(self, ref: BackupRef) -> None:
        if self.locked:
            # A head changes with every backup, so a lock cannot keep it honest (an overwrite by whoever
            # took the host would roll the chain back): locked repositories have none and list the chain.
            return
        key = HEADS_PREFIX + ref.name
        self.store.put(key, self.sealer.seal(self.stored_key(key), json.dumps({"key": ref.key}).encode()))

    def _remember(self, manifest: Manifest, raw: bytes) -> None:
        # The version is unknown until the next listing (learning it would cost a request): a copy of
        # unknown version serves lookups through a head or a parent, and is read again after a listing.
        with self._lock:
            self._manifests[manifest.ref.key] = ("", manifest)
            self._versions.pop(manifest.ref.key, None)
        if self._cache is not None:
            self._cache.put(manifest.ref.key, raw, "")

    def load_manifest(self, ref: BackupRef, fresh: bool = False) -> Manifest:
        """A backup's manifest: from memory or the local cache when they hold the version the store listed
        (or nothing was listed), else from the store; ``fresh`` always reads the store."""
        with self._lock:
            listed = self._versions.get(ref.key)
            held = self._manifests.get(ref.key)
        if held is not None and not fresh and (listed is None or held[0] == listed):
            return held[1]
        cache = self._cache
        raw = cache.get(ref.key, listed) if cache is not None and not fresh else None
        manifest: Manifest | None = None
        if raw is not None and cache is not None:
            try:
                manifest = Manifest.from_bytes(self.sealer.open(self.stored_key(ref.key), raw), ref.key)
            except CorruptDataError:
                cache.forget(ref.key)
        version = listed or ""
        if manifest is None:
            try:
                raw = self.store.get(ref.key)
            except NotFoundError:
                raise CorruptDataError(f"backup {ref.id} ({ref.name}) is missing from {self.location}") from None
            manifest = Manifest.from_bytes(self.sealer.open(self.stored_key(ref.key), raw), ref.key)
            if cache is not None:
                cache.put(ref.key, raw, version)
        with self._lock:
            self._manifests[ref.key] = (version, manifest)
        return manifest

    def prefetch_manifests(self, refs: Iterable[BackupRef]) -> None:
        """Read, in parallel, the manifests of ``refs`` that memory does not hold yet, so that the loop over
        them that follows finds them there. A remote store only: a cold ``list`` of a bucket that many hosts
        share is thousands of small GETs, each a round trip when made one after another. A manifest that
        cannot be read is left for that loop to meet and report."""
        capabilities = self.store.capabilities()
        with self._lock:
            wanted = [r for r in refs if r.key not in self._manifests]
        if not capabilities.remote or len(wanted) < 2:
            return

        def load(ref: BackupRef) -> None:
            with contextlib.suppress(CorruptDataError):
                self.load_manifest(ref)

        with ThreadPoolExecutor(max_workers=min(16, capabilities.parallelism, len(wanted)),
                                thread_name_prefix="cbtbackup-manifests") as pool:
            for _ in pool.map(load, wanted):
                pass

    def list_backups(self, name: str | None = None) -> list[BackupRef]:
        """Backups in (name, time) order, optionally of one name only."""
        prefix = BACKUPS_PREFIX + (f"{name}/" if name else "")
        refs = []
        for obj in self.store.list(prefix):
            ref = BackupRef.from_key(obj.key)
            if ref is not None:
                refs.append(ref)
                with self._lock:
                    self._versions[obj.key] = obj.version
        return sorted(refs, key=lambda r: (r.name, r.stamp))

    def latest(self, name: str) -> BackupRef | None:
        """The newest readable backup of a chain: from its head in one request, else by listing the chain
        (a manifest that cannot be read is passed over: ``verify`` reports it)."""
        with self._lock:
            known = self._heads.get(name)
        if known is not None:
            return known
        found = self._find_latest(name) if self.host_state is None else self._own_latest(name, self.host_state)
        if found is not None:
            with self._lock:
                self._heads[name] = found
        return found

    def why_no_latest(self, name: str) -> str:
        """Why :meth:`latest` found nothing this process may build on ('' when the chain simply has no backup)."""
        return self._no_latest.get(name, "")

    def tracking_sample(self, ref: BackupRef) -> tuple[SampledBlock, ...] | None:
        """Opened write-only: the blocks the host sampled when it wrote ``ref`` (None opened with a full key,
        which compares with the backup's own chunks instead)."""
        own = self._own.get(ref.key)
        return own[2] if own is not None and not self.can_read else None

    def _own_latest(self, name: str, state: HostState) -> BackupRef | None:
        """The newest backup of ``name`` from this host's own record, if the repository still holds its manifest
        byte for byte as this host sealed it (forget and repack re-seal what they rewrite, with a new salt)."""
        record, why = state.load(name)
        if record is None:
            self._no_latest[name] = why
            return None
        ref = BackupRef.from_key(record.ref_key)
        if ref is None or ref.name != name:
            self._no_latest[name] = f"this host's record of chain {name!r} names another chain's backup"
            return None
        try:
            stored = self.store.get(record.ref_key)
        except NotFoundError:
            self._no_latest[name] = f"backup {ref.id}, the newest this host recorded, is no longer in the repository"
            return None
        if _sealed_digest(stored) != record.version:
            self._no_latest[name] = (f"backup {ref.id} was rewritten since this host wrote it (forget or prune), "
                                     "so this host's record of it no longer holds")
            return None
        try:
            manifest = Manifest.from_bytes(record.manifest, record.ref_key)
            resolved = ExtentMap.from_bytes(record.resolved)
        except (CorruptDataError, ValueError):
            manifest = None
        if manifest is None or not manifest.has_map(resolved.map_digest()):
            self._no_latest[name] = f"this host's record of backup {ref.id} is damaged"
            return None
        self._own[ref.key] = (manifest, resolved, record.sample)
        with self._lock:
            self._manifests[ref.key] = ("", manifest)
        return ref

    def _find_latest(self, name: str) -> BackupRef | None:
        try:
            if self.locked:
                raise NotFoundError("locked repositories keep no heads")  # one planted by an attacker is not ours
            key = HEADS_PREFIX + name
            head = json.loads(self.sealer.open(self.stored_key(key), self.store.get(key)))
            ref = BackupRef.from_key(str(head["key"]))
        except (NotFoundError, CorruptDataError, ValueError, KeyError, TypeError):
            ref = None
        if ref is not None and ref.name == name:
            try:
                self.load_manifest(ref)
                return ref
            except CorruptDataError:
                pass  # a head naming a missing or damaged manifest: list instead
        for candidate in reversed(self.list_backups(name)):
            try:
                self.load_manifest(candidate)
            except CorruptDataError:
                continue
            return candidate
        return None

    def find(self, spec: str) -> BackupRef:
        """A backup by id, unique id prefix, ``latest`` (one chain only), ``NAME@latest`` or
        ``NAME@latest~N`` (the Nth before the newest)."""
        if "@latest" in spec:  # one chain: list it alone, not every chain's backups
            name, _, back = spec.partition("@latest")
            refs = self.list_backups(name) if name and "/" not in name else self.list_backups()
            if back and not (back.startswith("~") and back[1:].isdigit()):
                raise UsageError(f"{spec!r}: say NAME@latest or NAME@latest~N")
            named = self._chain_refs(refs, name)
            n = int(back[1:]) if back else 0
            if n >= len(named):
                raise NotFoundError(f"chain {name!r} has {len(named)} backup(s); there is no latest~{n}")
            return named[-1 - n]
        if (known := self._cached_ref(spec)) is not None:
            return known
        refs = self.list_backups()
        if spec == "latest":
            return self._only_chain(refs)[-1]
        matches = [r for r in refs if r.id.startswith(spec)]
        if not spec or not matches:
            raise NotFoundError(f"no backup {spec!r} in {self.location}")
        if len(matches) > 1:
            raise AmbiguousBackupError(f"backup id prefix {spec!r} matches {len(matches)} backups; give more of it")
        return matches[0]

    def _cached_ref(self, spec: str) -> BackupRef | None:
        """A whole backup id whose manifest the local cache holds, confirmed in the store with one request:
        finding an id otherwise lists every backup of every chain, pages of 1000 in a bucket of many hosts."""
        if self._cache is None or len(spec) != 16 or any(c not in "0123456789abcdef" for c in spec):
            return None
        keys = self._cache.keys_ending(f"_{spec}")
        ref = BackupRef.from_key(keys[0]) if len(keys) == 1 else None
        info = self.store.stat(ref.key) if ref is not None and ref.id == spec else None
        if ref is None or info is None:
            return None
        with self._lock:
            self._versions[ref.key] = info.version  # the cached copy is used only if it is this version
        return ref

    def find_at(self, chain: str, when: float) -> BackupRef:
        """The newest backup of ``chain`` (a name, ``NAME@latest``, or ``latest`` for the only chain) taken
        at ``when`` or before (seconds since the epoch)."""
        name = chain[: -len("@latest")] if chain.endswith("@latest") else chain
        refs = self.list_backups(name if name != "latest" and "/" not in name else None)
        named = self._only_chain(refs) if name == "latest" else self._chain_refs(refs, name)
        before = [r for r in named if r.time <= when]
        if not before:
            raise NotFoundError(f"chain {named[0].name!r} has no backup at or before that time (its first is "
                                f"{named[0].stamp})")
        return before[-1]

    def _chain_refs(self, refs: list[BackupRef], name: str) -> list[BackupRef]:
        named = [r for r in refs if r.name == name]
        if not named:
            raise NotFoundError(f"no backups named {name!r} in {self.location}")
        return named

    def _only_chain(self, refs: list[BackupRef]) -> list[BackupRef]:
        names = sorted({r.name for r in refs})
        if not names:
            raise NotFoundError(f"{self.location} holds no backups")
        if len(names) > 1:
            raise AmbiguousBackupError(
                f"'latest' is ambiguous: the repository holds {', '.join(names)}; say NAME@latest"
            )
        return refs

    def chain(self, ref: BackupRef, fresh: bool = False) -> list[Manifest]:
        """The manifests from ``ref`` back to its full backup, newest first."""
        chain = [self.load_manifest(ref, fresh)]
        while chain[-1].parent is not None:
            if len(chain) > 100_000:
                raise CorruptDataError(f"the chain of backup {ref.id} does not end in a full backup")
            chain.append(self.load_manifest(chain[-1].parent, fresh))
        if chain[-1].kind != "full":
            raise CorruptDataError(f"the chain of backup {ref.id} does not end in a full backup")
        return chain

    def resolve(self, ref: BackupRef) -> tuple[Manifest, ExtentMap]:
        """The manifest of ``ref`` and its resolved map (every byte of the image, newest piece first).

        A chain that does not resolve is read once more from the store: copies held in memory or in the
        local cache may predate a ``forget`` that folded a parent into its child."""
        if (own := self._own.get(ref.key)) is not None:
            return own[0], own[1]
        try:
            return self._resolve(self.chain(ref), ref)
        except CorruptDataError:
            return self._resolve(self.chain(ref, fresh=True), ref)

    def _resolve(self, chain: list[Manifest], ref: BackupRef) -> tuple[Manifest, ExtentMap]:
        resolved = resolve_chain([m.extents for m in chain])
        top = chain[0]
        if not resolved.covers(top.device_size) or not top.has_map(resolved.map_digest()):
            raise CorruptDataError(
                f"backup {ref.id}: the map resolved from its chain does not match the digest it was saved with"
            )
        return top, resolved


def _sealed_digest(sealed: bytes) -> str:
    return "blake3:" + blake3.blake3(sealed).hexdigest()
