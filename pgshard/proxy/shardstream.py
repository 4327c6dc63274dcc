"""One shard's reply to a fan-out read, held as it arrives: whole frames, up to a byte
budget, with the server's socket paused beyond it (backpressure, frame by frame)."""

from __future__ import annotations

import asyncio
from collections import deque
from struct import Struct

from pgshard.protocol.errors import ConnectionFailure, PgError
from pgshard.proxy.backend import ServerClient

_I32 = Struct("!i")
D_ROW, ROW_DESC, ERROR, READY = 0x44, 0x54, 0x45, 0x5A
ASYNC_TYPES = frozenset(b"NAS")   # notice, notification, parameter status


class Wakeup:
    """A level a consumer waits on until any of its producers has news."""

    __slots__ = ("_fut",)

    def __init__(self):
        self._fut: asyncio.Future | None = None

    def set(self) -> None:
        f = self._fut
        if f is not None and not f.done():
            f.set_result(None)

    async def wait(self) -> None:
        self._fut = asyncio.get_running_loop().create_future()
        try:
            await self._fut
        finally:
            self._fut = None


class ShardStream(ServerClient):
    """Stands in for a client while a server answers a fan-out read (the server calls
    write/server_idle/server_lost as it would on a ClientSession).

    Strategy: the server relays whole frames, so each chunk is kept as it came and read
    in place (no per-frame objects until a frame is consumed). Past `budget` buffered
    bytes the server's transport stops reading, so PostgreSQL blocks on its socket; it
    resumes when the reader has taken half. `discard` drops everything that arrives (an
    error was reported, or the client left); `skip_rows` drops DataRows only (a LIMIT is
    satisfied), keeping the frames that end the reply."""

    def __init__(self, pool, server, budget: int, wakeup: Wakeup):
        self.pool = pool
        self.server = server
        self.budget = budget
        self.wakeup = wakeup
        self._chunks: deque[bytes] = deque()
        self._pos = 0                  # read offset in _chunks[0]
        self.buffered = 0              # bytes held, not yet taken
        self.peak = 0                  # most bytes held at once (tests, metrics)
        self.paused = False
        self.idle = False              # the server reached ReadyForQuery, nothing owed
        self.lost: PgError | None = None
        self.discard = False
        self.skip_rows = False

    # -- the server's side ---------------------------------------------------------------

    def write(self, data) -> None:
        if self.discard or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        if self.skip_rows:
            data = _without_rows(data)
            if not data:
                return
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self.peak:
            self.peak = self.buffered
        if self.buffered > self.budget and not self.paused:
            self._pause()
        self.wakeup.set()

    def server_idle(self, server) -> None:
        self.idle = True
        self.wakeup.set()

    def server_lost(self, server, reason: str) -> None:
        self.lost = ConnectionFailure(f"lost the server connection: {reason}")
        self.idle = True
        self.wakeup.set()


    # -- the reader's side ---------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Nothing more will come and nothing is left to read."""
        return self.idle and not self._chunks

    def peek(self) -> int | None:
        """The type of the next frame, or None if none is buffered."""
        if not self._chunks:
            return None
        return self._chunks[0][self._pos]

    def pop(self) -> bytes:
        """The next whole frame (header included); peek() must have said there is one."""
        chunk = self._chunks[0]
        pos = self._pos
        end = pos + 1 + _I32.unpack_from(chunk, pos + 1)[0]
        frame = chunk if (pos == 0 and end == len(chunk)) else chunk[pos:end]
        self._advance(chunk, end, end - pos)
        return frame

    def pop_rows(self, most: int | None, kind: int = D_ROW) -> tuple[bytes, int]:
        """Consecutive DataRow frames (or frames of another kind: CopyData) from the front,
        as one slice, and how many (at most `most`, None: no limit); (b"", 0) if the next
        frame is not one."""
        if not self._chunks:
            return b"", 0
        chunk = self._chunks[0]
        start = pos = self._pos
        size = len(chunk)
        n = 0
        unpack = _I32.unpack_from
        while pos < size and chunk[pos] == kind and (most is None or n < most):
            pos += 1 + unpack(chunk, pos + 1)[0]
            n += 1
        if not n:
            return b"", 0
        run = chunk if (start == 0 and pos == size) else chunk[start:pos]
        self._advance(chunk, pos, pos - start)
        return run, n

    def drop_rows(self) -> None:
        """From now on DataRows are not kept: drop the buffered ones, and later ones."""
        self.skip_rows = True
        rest = _without_rows(self._take_all())
        if rest:
            self._chunks.append(rest)
        self.buffered = len(rest)
        self._resume_if_low()

    def drop_all(self) -> None:
        """Nothing more is needed from this server but its way to ReadyForQuery."""
        self.discard = True
        self._take_all()
        self.buffered = 0
        self._resume_if_low()

    def close(self) -> None:
        """The server goes back to its owner: never leave its socket paused."""
        self.discard = True
        self._chunks.clear()
        self.buffered = 0
        if self.paused:
            self.paused = False
            t = self.server.transport
            if t is not None and not t.is_closing():
                t.resume_reading()

    # -- internals -----------------------------------------------------------------------

    def _advance(self, chunk: bytes, end: int, used: int) -> None:
        if end >= len(chunk):
            self._chunks.popleft()
            self._pos = 0
        else:
            self._pos = end
        self.buffered -= used
        if self.paused:
            self._resume_if_low()

    def _take_all(self) -> bytes:
        if not self._chunks:
            return b""
        first = self._chunks.popleft()
        parts = [first[self._pos:]] + list(self._chunks)
        self._chunks.clear()
        self._pos = 0
        return b"".join(parts)

    def _pause(self) -> None:
        t = self.server.transport
        if t is not None and not t.is_closing():
            self.paused = True
            t.pause_reading()

    def _resume_if_low(self) -> None:
        if self.paused and self.buffered <= self.budget // 2:
            self.paused = False
            t = self.server.transport
            if t is not None and not t.is_closing():
                t.resume_reading()


def _without_rows(data: bytes) -> bytes:
    """data (whole frames) minus its DataRow frames."""
    out = []
    pos, size, span = 0, len(data), 0
    while pos < size:
        end = pos + 1 + _I32.unpack_from(data, pos + 1)[0]
        if data[pos] == D_ROW:
            if span < pos:
                out.append(data[span:pos])
            span = end
        pos = end
    if span == 0:
        return data
    if span < size:
        out.append(data[span:])
    return b"".join(out)
