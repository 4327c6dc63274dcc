"""Framing of the PostgreSQL v3 byte stream: startup packets and typed messages, no I/O.

A `FrameBuffer` is fed bytes as they arrive and hands out whole messages only; nothing
here looks inside a message body. Bad framing raises `ProtocolViolation` (08P01).
"""

from __future__ import annotations

from struct import Struct

from pgshard.protocol.errors import ProtocolViolation

_I32 = Struct("!i")
_HDR = Struct("!ci")  # type byte, length (includes itself, not the type byte)

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_SIZE = 10_000  # PostgreSQL's own MAX_STARTUP_PACKET_LENGTH

# Startup packet request codes.
PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Frontend message types the proxy may receive from a client.
FRONTEND_TYPES = frozenset(b"QPBDECSHXdcfp")
# Backend message types the proxy may receive from a server.
BACKEND_TYPES = frozenset(b"RSKZETDCIs123tnGHWdcNAv")


class FrameBuffer:
    """Accumulates bytes; yields complete messages as (type byte, body bytes)."""

    __slots__ = ("_buf", "_pos", "max_size", "allowed")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 allowed: frozenset[int] | None = None):
        self._buf = bytearray()
        self._pos = 0
        self.max_size = max_size
        self.allowed = allowed

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            # Everything was consumed: start over rather than grow forever.
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def take_all(self) -> bytes:
        """Return and drop every buffered byte (used when switching to TLS)."""
        data = bytes(self._buf[self._pos:])
        self._buf.clear()
        self._pos = 0
        return data

    def next_startup(self) -> tuple[int, bytes] | None:
        """The next untyped startup-phase packet as (request code, body after the code)."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _I32.unpack_from(buf, pos)
        if length < 8 or length > MAX_STARTUP_SIZE:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(buf) - pos < length:
            return None
        (code,) = _I32.unpack_from(buf, pos + 4)
        body = bytes(buf[pos + 8:pos + length])
        self._consume(length)
        return code, body

    def next_message(self) -> tuple[int, bytes] | None:
        """The next whole typed message, or None until more bytes arrive."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 5:
            return None
        mtype = buf[pos]
        (length,) = _I32.unpack_from(buf, pos + 1)
        self._check(mtype, length)
        if avail < length + 1:
            return None
        body = bytes(buf[pos + 5:pos + 1 + length])
        self._consume(length + 1)
        return mtype, body

    def next_frame(self) -> tuple[int, bytes] | None:
        """Like next_message, but returns the whole frame (header included) for forwarding."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 5:
            return None
        mtype = buf[pos]
        (length,) = _I32.unpack_from(buf, pos + 1)
        self._check(mtype, length)
        if avail < length + 1:
            return None
        raw = bytes(buf[pos:pos + 1 + length])
        self._consume(length + 1)
        return mtype, raw

    def scan(self) -> tuple[list[tuple[int, int, int]], memoryview | bytes]:
        """All whole messages buffered now, as (type, start, end) offsets into the returned
        view, and consume them. Bodies are not copied: the caller slices what it needs."""
        buf, pos = self._buf, self._pos
        end = len(buf)
        frames = []
        start = pos
        while end - pos >= 5:
            mtype = buf[pos]
            (length,) = _I32.unpack_from(buf, pos + 1)
            self._check(mtype, length)
            nxt = pos + 1 + length
            if nxt > end:
                break
            frames.append((mtype, pos - start, nxt - start))
            pos = nxt
        if not frames:
            return frames, b""
        data = bytes(buf[start:pos])
        self._consume(pos - start)
        return frames, data

    def _check(self, mtype: int, length: int) -> None:
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}")
        if length > self.max_size:
            raise ProtocolViolation(
                f"message of {length} bytes exceeds max_message_size ({self.max_size})")
        if self.allowed is not None and mtype not in self.allowed:
            raise ProtocolViolation(f"invalid message type {chr(mtype)!r}")

    def _consume(self, n: int) -> None:
        self._pos += n
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
