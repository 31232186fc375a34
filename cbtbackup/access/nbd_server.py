"""A read-only NBD server for one backup: what ``cbtbackup serve`` runs.

It speaks the newstyle fixed handshake with ``NBD_OPT_GO``/``INFO``/``EXPORT_NAME``/``LIST``/``ABORT``,
structured replies, and the ``base:allocation`` meta context (zero ranges of the backup reported as
holes that read as zeros), which is enough for ``qemu-img``, ``qemu-nbd`` and the kernel's ``nbd-client``.
Every read goes through :class:`BackupReader`, so every byte served is verified; a chunk that fails its
checks answers that read with EIO (and one log line naming the chunk), never with bytes. Writes, trims and
zeroing are refused with EPERM: the export is read-only.

Why our own server and not nbdkit: the protocol subset is small (a few hundred lines, tested here against
the real qemu-img), it reads through the same verified chunk path as restore and mount in the same
process, and it needs no plugin ABI, no extra package, and no second process to keep in step.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable

from cbtbackup.errors import CbtError, UsageError
from cbtbackup.model.nbd_protocol import (
    ALLOCATION_ID,
    BASE_ALLOCATION,
    CMD_BLOCK_STATUS,
    CMD_CACHE,
    CMD_DISC,
    CMD_FLAG_REQ_ONE,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_INFO,
    OPT_LIST,
    OPT_LIST_META_CONTEXT,
    OPT_REPLY_MAGIC,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_META_CONTEXT,
    REP_SERVER,
    REPLY_FLAG_DONE,
    REPLY_TYPE_BLOCK_STATUS,
    REPLY_TYPE_ERROR,
    REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STATE_HOLE,
    STATE_ZERO,
    STRUCTURED_REPLY_MAGIC,
    TX_CAN_MULTI_CONN,
    TX_HAS_FLAGS,
    TX_READ_ONLY,
    TX_SEND_DF,
    TX_SEND_FLUSH,
)
from cbtbackup.pipeline.reader import BackupReader
from cbtbackup.repo.chunk_codec import CorruptChunkError

MAX_REQUEST = 32 << 20
TRANSMISSION_FLAGS = TX_HAS_FLAGS | TX_READ_ONLY | TX_SEND_FLUSH | TX_SEND_DF | TX_CAN_MULTI_CONN

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"cbtbackup serve: {line}", file=sys.stderr, flush=True)


class _Closed(Exception):
    """The client went away."""


class Connection:
    """One client: the handshake, then requests until it disconnects."""

    def __init__(self, sock: socket.socket, reader: BackupReader, export: str, log: Log) -> None:
        self.sock, self.reader, self.export, self.log = sock, reader, export, log
        self.structured = False
        self.allocation = False

    # -- plumbing ------------------------------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return bytes(buf)

    def _option_reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QIII", OPT_REPLY_MAGIC, option, kind, len(data)) + data)

    # -- handshake -----------------------------------------------------------------------------------------

    def handshake(self) -> bool:
        """True once the client chose this export for transmission."""
        self.sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", self._recv(4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack(">QII", self._recv(16))
            if magic != IHAVEOPT or length > 1 << 20:
                return False
            data = self._recv(length)
            if option == OPT_EXPORT_NAME:
                if data.decode(errors="replace") not in ("", self.export):
                    return False
                self.sock.sendall(struct.pack(">QH", self.reader.size, TRANSMISSION_FLAGS)
                                  + (b"" if no_zeroes else bytes(124)))
                return True
            if option == OPT_ABORT:
                self._option_reply(option, REP_ACK)
                return False
            if option == OPT_LIST:
                name = self.export.encode()
                self._option_reply(option, REP_SERVER, struct.pack(">I", len(name)) + name)
                self._option_reply(option, REP_ACK)
            elif option in (OPT_INFO, OPT_GO):
                if self._info(option, data) and option == OPT_GO:
                    return True
            elif option == OPT_STRUCTURED_REPLY:
                self.structured = True
                self._option_reply(option, REP_ACK)
            elif option in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
                self._meta_context(option, data)
            else:
                self._option_reply(option, REP_ERR_UNSUP)

    def _info(self, option: int, data: bytes) -> bool:
        (name_len,) = struct.unpack_from(">I", data)
        name = data[4:4 + name_len].decode(errors="replace")
        if name not in ("", self.export):
            self._option_reply(option, REP_ERR_UNKNOWN, b"no such export")
            return False
        self._option_reply(option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, self.reader.size, TRANSMISSION_FLAGS))
        self._option_reply(option, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
        self._option_reply(option, REP_ACK)
        return True

    def _meta_context(self, option: int, data: bytes) -> None:
        if not self.structured:
            self._option_reply(option, REP_ERR_INVALID, b"structured replies first")
            return
        (name_len,) = struct.unpack_from(">I", data)
        pos = 4 + name_len
        (count,) = struct.unpack_from(">I", data, pos)
        pos += 4
        queries = []
        for _ in range(count):
            (qlen,) = struct.unpack_from(">I", data, pos)
            queries.append(data[pos + 4: pos + 4 + qlen])
            pos += 4 + qlen
        wanted = not queries or any(BASE_ALLOCATION.startswith(q) or q == b"base:" for q in queries)
        if wanted:
            self._option_reply(option, REP_META_CONTEXT, struct.pack(">I", ALLOCATION_ID) + BASE_ALLOCATION)
            if option == OPT_SET_META_CONTEXT:
                self.allocation = True
        self._option_reply(option, REP_ACK)

    # -- transmission --------------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            magic, flags, kind, handle, offset, length = struct.unpack(">IHHQQI", self._recv(28))
            if magic != REQUEST_MAGIC:
                return
            if kind == CMD_WRITE:
                self._recv(length)  # read and refuse: the export is read-only
            if kind == CMD_DISC:
                return
            if kind in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES):
                self._error(handle, errno.EPERM, "the export is read-only")
            elif offset + length > self.reader.size or (kind == CMD_READ and length > MAX_REQUEST):
                self._error(handle, errno.EINVAL, "request outside the export")
            elif kind == CMD_READ:
                self._read(handle, offset, length)
            elif kind == CMD_BLOCK_STATUS and self.allocation:
                self._block_status(handle, offset, length, one=bool(flags & CMD_FLAG_REQ_ONE))
            elif kind in (CMD_FLUSH, CMD_CACHE):
                self._done(handle)
            else:
                self._error(handle, errno.EINVAL, "unsupported request")

    def _read(self, handle: int, offset: int, length: int) -> None:
        try:
            data = self.reader.read(offset, length)
        except CorruptChunkError as e:
            self.log(f"read of {length} bytes at {offset} failed: {e}")
            self._error(handle, errno.EIO, "a chunk failed its checks")
            return
        except CbtError as e:
            self.log(f"read of {length} bytes at {offset} failed: {e}")
            self._error(handle, errno.EIO, "read failed")
            return
        if self.structured:
            self._chunk(handle, REPLY_TYPE_OFFSET_DATA, struct.pack(">Q", offset) + data, done=True)
        else:
            self.sock.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle) + data)

    def _block_status(self, handle: int, offset: int, length: int, one: bool) -> None:
        descriptors = bytearray()
        for piece in self.reader.pieces(offset, length):
            state = STATE_HOLE | STATE_ZERO if piece.is_zero else 0
            if descriptors and struct.unpack_from(">I", descriptors, len(descriptors) - 4)[0] == state:
                (run,) = struct.unpack_from(">I", descriptors, len(descriptors) - 8)
                struct.pack_into(">I", descriptors, len(descriptors) - 8, run + piece.length)
            elif one and descriptors:
                break  # the client asked for one descriptor
            else:
                descriptors += struct.pack(">II", piece.length, state)
        self._chunk(handle, REPLY_TYPE_BLOCK_STATUS, struct.pack(">I", ALLOCATION_ID) + descriptors, done=True)

    def _chunk(self, handle: int, kind: int, payload: bytes, done: bool) -> None:
        flags = REPLY_FLAG_DONE if done else 0
        self.sock.sendall(struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, flags, kind, handle, len(payload)) + payload)

    def _done(self, handle: int) -> None:
        if self.structured:
            self._chunk(handle, REPLY_TYPE_NONE, b"", done=True)
        else:
            self.sock.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle))

    def _error(self, handle: int, err: int, message: str) -> None:
        if self.structured:
            text = message.encode()
            self._chunk(handle, REPLY_TYPE_ERROR, struct.pack(">IH", err, len(text)) + text, done=True)
        else:
            self.sock.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, err, handle))


def listen(address: str) -> socket.socket:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (a loopback host unless you mean it)."""
    kind, _, where = address.partition(":")
    if kind == "unix" and where:
        if os.path.exists(where):
            raise UsageError(f"{where} exists; remove it or choose another socket path")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
        os.chmod(where, 0o600)
    elif kind == "tcp" and where.rpartition(":")[2].isdigit():
        host, _, port = where.rpartition(":")
        sock = socket.create_server((host or "127.0.0.1", int(port)))
    else:
        raise UsageError(f"--listen {address!r}: say unix:PATH or tcp:127.0.0.1:PORT")
    sock.listen(16)
    return sock


def serve_forever(server: socket.socket, reader: BackupReader, export: str, stop: threading.Event,
                  log: Log = _stderr) -> None:
    """Accept clients until ``stop`` is set; each client in a thread of its own."""
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            sock, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        sock.settimeout(None)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_client, args=(sock, reader, export, log), daemon=True).start()


def _client(sock: socket.socket, reader: BackupReader, export: str, log: Log) -> None:
    conn = Connection(sock, reader, export, log)
    try:
        if conn.handshake():
            conn.serve()
    except (_Closed, ConnectionError, struct.error):
        pass
    finally:
        sock.close()
