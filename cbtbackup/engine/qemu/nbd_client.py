"""A small NBD client: what the QEMU provider needs of the protocol, and nothing more.

Newstyle fixed handshake; ``NBD_OPT_STRUCTURED_REPLY``; ``NBD_OPT_SET_META_CONTEXT`` for
``base:allocation`` and one ``qemu:dirty-bitmap:NAME``; ``NBD_OPT_GO``; then ``NBD_CMD_READ`` (data and
hole chunks) and ``NBD_CMD_BLOCK_STATUS`` with structured replies, one request at a time on a Unix socket.
No maintained Python package does this; the client is tested against QEMU's own servers
(``qemu-storage-daemon``, ``qemu-nbd``) and against cbtbackup's server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct
from collections.abc import Iterator

from cbtbackup.errors import StorageError
from cbtbackup.model.nbd_protocol import (
    BASE_ALLOCATION,
    CMD_BLOCK_STATUS,
    CMD_DISC,
    CMD_READ,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    IHAVEOPT,
    INFO_EXPORT,
    NBDMAGIC,
    OPT_GO,
    OPT_REPLY_MAGIC,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_INFO,
    REP_META_CONTEXT,
    REPLY_FLAG_DONE,
    REPLY_FLAG_ERROR_BIT,
    REPLY_TYPE_BLOCK_STATUS,
    REPLY_TYPE_NONE,
    REPLY_TYPE_OFFSET_DATA,
    REPLY_TYPE_OFFSET_HOLE,
    REQUEST_MAGIC,
    STATE_ZERO,
    STRUCTURED_REPLY_MAGIC,
)

MAX_READ = 32 << 20  # QEMU's NBD servers refuse larger requests
STATUS_SPAN = 1 << 30  # block status asked this much at a time (the server may answer less)


def dirty_bitmap_context(bitmap: str) -> bytes:
    return f"qemu:dirty-bitmap:{bitmap}".encode()


class NbdError(StorageError):
    """The NBD server refused or broke the protocol."""


@dataclasses.dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    flags: int


class NbdClient:
    """One export over a Unix socket; ``bytes_read`` counts the bytes that came as data."""

    def __init__(self, socket_path: str, export: str, bitmaps: tuple[str, ...] = ()) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.bytes_read = 0
        self.reads = 0
        self._handle = 0
        self.contexts: dict[bytes, int] = {}
        try:
            self.sock.connect(socket_path)
            self._handshake(export, [BASE_ALLOCATION, *(dirty_bitmap_context(b) for b in bitmaps)])
        except OSError as e:
            self.sock.close()
            raise NbdError(f"NBD export {export!r} at {socket_path}: {e.strerror or e}") from None
        except BaseException:
            self.sock.close()
            raise

    # -- plumbing --------------------------------------------------------------------------------------------

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if count == 0:
                raise NbdError("the NBD server closed the connection")
            got += count

    def _option(self, option: int, data: bytes) -> None:
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, opt, reply, length = struct.unpack(">QIII", self._recv(20))
        if magic != OPT_REPLY_MAGIC or opt != option:
            raise NbdError(f"bad option reply (magic {magic:#x}, option {opt})")
        data = self._recv(length)
        if reply & 0x80000000:
            message = data.decode(errors="replace") or f"error {reply & 0x7FFFFFFF}"
            raise NbdError(f"the NBD server refused option {option}: {message}")
        return reply, data

    def _handshake(self, export: str, contexts: list[bytes]) -> None:
        magic, opt_magic, flags = struct.unpack(">QQH", self._recv(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not flags & FLAG_FIXED_NEWSTYLE:
            raise NbdError("not a newstyle fixed NBD server")
        self.sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
        self._option(OPT_STRUCTURED_REPLY, b"")
        self._option_reply(OPT_STRUCTURED_REPLY)
        name = export.encode()
        query = struct.pack(">I", len(name)) + name + struct.pack(">I", len(contexts))
        query += b"".join(struct.pack(">I", len(c)) + c for c in contexts)
        self._option(OPT_SET_META_CONTEXT, query)
        while True:
            reply, data = self._option_reply(OPT_SET_META_CONTEXT)
            if reply == REP_ACK:
                break
            if reply == REP_META_CONTEXT:
                self.contexts[data[4:]] = struct.unpack(">I", data[:4])[0]
        missing = [c.decode() for c in contexts if c not in self.contexts]
        if missing:
            raise NbdError(f"the NBD export {export!r} does not offer {', '.join(missing)}")
        self._option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        self.size = -1
        while True:
            reply, data = self._option_reply(OPT_GO)
            if reply == REP_ACK:
                break
            if reply == REP_INFO and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                self.size, self.transmission_flags = struct.unpack(">QH", data[2:12])
        if self.size < 0:
            raise NbdError("the NBD server did not give the export's size")

    def _request(self, command: int, offset: int, length: int, flags: int = 0) -> int:
        self._handle += 1
        self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, self._handle, offset, length))
        return self._handle

    def _replies(self, handle: int) -> Iterator[tuple[int, bytes]]:
        """The structured reply chunks of one request, up to the one flagged done."""
        while True:
            magic, flags, kind, got, length = struct.unpack(">IHHQI", self._recv(20))
            if magic != STRUCTURED_REPLY_MAGIC or got != handle:
                raise NbdError(f"bad reply (magic {magic:#x}, handle {got}, expected {handle})")
            payload = self._recv(length)
            if kind & REPLY_FLAG_ERROR_BIT:
                code = struct.unpack(">I", payload[:4])[0]
                raise NbdError(f"the NBD server answered {os.strerror(code) if code else 'an error'}")
            if kind != REPLY_TYPE_NONE:
                yield kind, payload
            if flags & REPLY_FLAG_DONE:
                return

    # -- commands --------------------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytearray:
        """The bytes at [offset, offset + length); data chunks are received straight into place."""
        out = bytearray(length)
        view = memoryview(out)
        position = offset
        while position < offset + length:
            size = min(MAX_READ, offset + length - position)
            handle = self._request(CMD_READ, position, size)
            self.reads += 1
            while True:
                magic, flags, kind, got, chunk = struct.unpack(">IHHQI", self._recv(20))
                if magic != STRUCTURED_REPLY_MAGIC or got != handle:
                    raise NbdError(f"bad reply (magic {magic:#x}, handle {got}, expected {handle})")
                if kind == REPLY_TYPE_OFFSET_DATA:
                    at = struct.unpack(">Q", self._recv(8))[0] - offset
                    if not 0 <= at <= length - (chunk - 8):
                        raise NbdError("the NBD server sent data outside the read")
                    self._recv_into(view[at: at + chunk - 8])
                    self.bytes_read += chunk - 8
                elif kind & REPLY_FLAG_ERROR_BIT:
                    code = struct.unpack(">I", self._recv(chunk)[:4])[0]
                    raise NbdError(f"the NBD server answered {os.strerror(code) if code else 'an error'}")
                elif kind in (REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_NONE):
                    self._recv(chunk)  # a hole reads as the zeros out holds already
                else:
                    raise NbdError(f"unexpected reply chunk {kind} to a read")
                if flags & REPLY_FLAG_DONE:
                    break
            position += size
        return out

    def block_status(self, context: bytes, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """The extents of one meta context over [offset, offset + length), in order and without gaps."""
        end = self.size if length is None else offset + length
        context_id = self.contexts[context]
        while offset < end:
            handle = self._request(CMD_BLOCK_STATUS, offset, min(STATUS_SPAN, end - offset))
            advanced = offset
            for kind, payload in self._replies(handle):
                if kind != REPLY_TYPE_BLOCK_STATUS or struct.unpack(">I", payload[:4])[0] != context_id:
                    continue
                for i in range(4, len(payload), 8):
                    extent_length, flags = struct.unpack(">II", payload[i: i + 8])
                    extent_length = min(extent_length, end - advanced)
                    if extent_length:
                        yield Extent(advanced, extent_length, flags)
                        advanced += extent_length
            if advanced == offset:
                raise NbdError("the NBD server's block status made no progress")
            offset = advanced

    def zero_extents(self) -> list[tuple[int, int]]:
        """(offset, length) of the ranges ``base:allocation`` says read as zeros."""
        out: list[tuple[int, int]] = []
        for extent in self.block_status(BASE_ALLOCATION):
            if extent.flags & STATE_ZERO:
                if out and out[-1][0] + out[-1][1] == extent.offset:
                    out[-1] = (out[-1][0], out[-1][1] + extent.length)
                else:
                    out.append((extent.offset, extent.length))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._request(CMD_DISC, 0, 0)
        self.sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
