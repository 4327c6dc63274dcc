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
FRONTEND_TYPES = frozenset(b"QPBDECSHXdcfpF")   # F: a fastpath FunctionCall
# Backend message types the proxy may receive from a server.
BACKEND_TYPES = frozenset(b"RSKZETDCIs123tnGHWdcNAvV")


class FrameBuffer:
    """Accumulates bytes; yields complete messages as (type byte, body bytes).

    Strategy: most reads hold whole messages only, so bytes fed into an empty buffer are
    kept as they are (no copy) and consumed in place; only a partial tail is copied.

    A header's length is read byte by byte (`p[i]`, the signed big-endian int32 written out):
    compiled, `p` is a C pointer into the bytes or bytearray, so that is four loads and no
    call; uncompiled it is plain indexing."""

    __slots__ = ("_buf", "_pos", "_ext", "_epos", "max_size", "allowed")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 allowed: frozenset[int] | None = None):
        self._buf = bytearray()
        self._pos = 0
        self._ext: bytes | None = None   # fed bytes not copied yet
        self._epos = 0
        self.max_size = max_size
        self.allowed = allowed

    def feed(self, data: bytes) -> None:
        if type(data) is not bytes:   # kept as it is below: read as bytes (see _length_at)
            data = bytes(data)
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        ext = self._ext
        if ext is not None:
            # Bytes still pending in place: join them (and what follows) in the buffer.
            self._buf += memoryview(ext)[self._epos:]
            self._ext = None
            self._epos = 0
        elif not self._buf:
            self._ext = data
            return
        self._buf += data

    def _spill(self) -> None:
        """Move pending in-place bytes into the buffer (for the slow paths)."""
        ext = self._ext
        if ext is not None:
            self._buf += memoryview(ext)[self._epos:]
            self._ext = None
            self._epos = 0

    def __len__(self) -> int:
        n = len(self._buf) - self._pos
        if self._ext is not None:
            n += len(self._ext) - self._epos
        return n

    def take_all(self) -> bytes:
        """Return and drop every buffered byte (used when switching to TLS)."""
        self._spill()
        data = bytes(self._buf[self._pos:])
        self._buf.clear()
        self._pos = 0
        return data

    def next_startup(self) -> tuple[int, bytes] | None:
        """The next untyped startup-phase packet as (request code, body after the code)."""
        self._spill()
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
        """The next whole typed message as (type, body), or None until more bytes arrive."""
        msg = self.next_frame()
        return None if msg is None else (msg[0], msg[1][5:])

    def next_frame(self) -> tuple[int, bytes] | None:
        """Like next_message, but returns the whole frame (header included) for forwarding."""
        ext = self._ext
        if ext is not None:
            pos = self._epos
            avail = len(ext) - pos
            if avail < 5:
                self._spill()
                return None
            p = ext
            mtype = p[pos]
            length = ((p[pos + 1] ^ 0x80) - 0x80) * 16777216 + (p[pos + 2] << 16) \
                + (p[pos + 3] << 8) + p[pos + 4]
            self._check(mtype, length)
            end = pos + 1 + length
            if end > len(ext):
                self._spill()
                return None
            raw = ext if (pos == 0 and end == len(ext)) else ext[pos:end]
            if end == len(ext):
                self._ext = None
                self._epos = 0
            else:
                self._epos = end
            return mtype, raw
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 5:
            return None
        p = buf
        mtype = p[pos]
        length = ((p[pos + 1] ^ 0x80) - 0x80) * 16777216 + (p[pos + 2] << 16) \
            + (p[pos + 3] << 8) + p[pos + 4]
        self._check(mtype, length)
        if avail < length + 1:
            return None
        raw = bytes(buf[pos:pos + 1 + length])
        self._consume(length + 1)
        return mtype, raw

    def scan(self) -> tuple[list[tuple[int, int, int]], memoryview | bytes]:
        """All whole messages buffered now, as (type, start, end) offsets into the returned
        bytes, and consume them. Bodies are not copied: the caller slices what it needs."""
        ext = self._ext
        if ext is not None and not self._epos:
            frames, n = self._frames(ext, 0)
            self._ext = None
            if n == len(ext):
                return frames, ext
            self._buf += memoryview(ext)[n:]
            return (frames, ext[:n]) if frames else (frames, b"")
        self._spill()
        frames, pos = self._frames(self._buf, self._pos)
        if not frames:
            return frames, b""
        data = bytes(self._buf[self._pos:pos])
        self._consume(pos - self._pos)
        return frames, data

    def _frames(self, data, start: int) -> tuple[list[tuple[int, int, int]], int]:
        """Whole frames in data from start: (frames with offsets from start, end offset)."""
        end = len(data)
        frames = []
        pos = start
        p = data
        while end - pos >= 5:
            mtype = p[pos]
            length = ((p[pos + 1] ^ 0x80) - 0x80) * 16777216 + (p[pos + 2] << 16) \
                + (p[pos + 3] << 8) + p[pos + 4]
            self._check(mtype, length)
            nxt = pos + 1 + length
            if nxt > end:
                break
            frames.append((mtype, pos - start, nxt - start))
            pos = nxt
        return frames, pos

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
