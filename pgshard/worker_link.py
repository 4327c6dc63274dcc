"""What one worker of `pgshard serve --workers N` knows of the others: its index (from the
environment the parent sets), the worker encoded in the BackendKeyData process ids it hands
out, and a unix socket per worker that takes forwarded CancelRequests and metrics scrapes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("pgshard.workers")

# Set by the parent (pgshard.workers) in each worker's environment.
ENV_INDEX = "PGSHARD_WORKER_INDEX"
ENV_COUNT = "PGSHARD_WORKERS"
ENV_DIR = "PGSHARD_WORKER_DIR"
ENV_PORT = "PGSHARD_WORKER_PORT"   # the port the parent chose when [proxy] port is 0
EXEC_PASSWORD_FILE = "execute-password"   # /v1/execute's internal login, the same in all
PID_LIMIT = 2 ** 31 - 1            # BackendKeyData process ids stay positive int32
LINK_TIMEOUT = 2.0                 # seconds a forwarded cancel or a scrape may take


def encode_pid(rand: int, index: int, count: int) -> int:
    """A process id for BackendKeyData whose residue mod count is the worker index: rand
    (any int >= 0) picks which one; never 0, always <= PID_LIMIT."""
    if count <= 1:
        return rand % PID_LIMIT or 1
    pid = (rand % ((PID_LIMIT - index) // count)) * count + index
    return pid or count


def worker_of(pid: int, count: int) -> int:
    """The worker that handed out pid (0 with a single worker)."""
    return pid % count if count > 1 else 0


def new_pid(index: int, count: int) -> int:
    return encode_pid(secrets.randbits(31), index, count)


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    count: int
    run_dir: Path
    port: int | None = None          # the proxy port when the config says 0

    @classmethod
    def from_env(cls, env=os.environ) -> WorkerInfo | None:
        """This process's place among the workers, or None outside `serve --workers N>1`."""
        if ENV_INDEX not in env:
            return None
        port = env.get(ENV_PORT)
        return cls(int(env[ENV_INDEX]), int(env[ENV_COUNT]), Path(env[ENV_DIR]),
                   int(port) if port else None)

    def socket_path(self, index: int | None = None) -> Path:
        return self.run_dir / f"worker-{self.index if index is None else index}.sock"

    def exec_password(self) -> str:
        return (self.run_dir / EXEC_PASSWORD_FILE).read_text().strip()

    def node_id(self, base: str) -> str:
        """Each worker is a router of its own in the store: its own registration lease."""
        return f"{base}-w{self.index}"


class WorkerLink:
    """This worker's unix socket: `C pid secret` cancels a session here, `M` answers the
    Prometheus text of this worker's registry. Also the client side towards the others."""

    def __init__(self, info: WorkerInfo, proxy, render):
        self.info = info
        self.proxy = proxy
        self.render = render          # () -> bytes: this worker's metrics text
        self._server: asyncio.AbstractServer | None = None
        self._parent = os.getppid()

    async def start(self) -> None:
        path = self.info.socket_path()
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.info.socket_path().unlink(missing_ok=True)
        if os.getppid() != self._parent:   # the parent was killed: nobody else cleans up
            shutil.rmtree(self.info.run_dir, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), LINK_TIMEOUT)).split()
            if line[:1] == [b"C"] and len(line) == 3:
                await self.proxy.cancel(int(line[1]), int(line[2]), forwarded=True)
                writer.write(b"ok\n")
            elif line == [b"M"]:
                writer.write(self.render())
            await writer.drain()
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    # ---------------------------------------------------------------- towards the others

    async def _ask(self, index: int, request: bytes) -> bytes:
        async def exchange() -> bytes:
            reader, writer = await asyncio.open_unix_connection(str(self.info.socket_path(index)))
            try:
                writer.write(request)
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
        return await asyncio.wait_for(exchange(), LINK_TIMEOUT)

    async def forward_cancel(self, index: int, pid: int, secret: int) -> None:
        """Hand a CancelRequest to the worker that owns the session (a missing or stopping
        worker: nothing to cancel, as with an unknown key)."""
        try:
            await self._ask(index, b"C %d %d\n" % (pid, secret))
        except (OSError, TimeoutError) as exc:
            log.warning("cancel request for worker %d not delivered: %s", index, exc)

    async def scrape(self) -> list[tuple[int, bytes | None]]:
        """(worker, metrics text or None when it did not answer) for every worker, this one
        rendered in place."""
        async def one(index: int) -> tuple[int, bytes | None]:
            if index == self.info.index:
                return index, self.render()
            with contextlib.suppress(OSError, TimeoutError):
                return index, await self._ask(index, b"M\n")
            return index, None
        return list(await asyncio.gather(*(one(i) for i in range(self.info.count))))
