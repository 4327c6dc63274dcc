"""The client sessions of one proxy process by the BackendKeyData they were given, and
cancel requests matched against them (or handed to the worker that owns the session)."""

from __future__ import annotations

import secrets

from pgshard.worker_link import new_pid, worker_of


class SessionRegistry:
    """pid -> session for every logged-in client; the pid and secret a session hands out
    come from here (with several workers the pid names the worker, see worker_link)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.clients: dict[int, object] = {}

    def register(self, client) -> tuple[int, int]:
        proxy = self.proxy
        while True:
            if proxy.workers == 1:
                pid = secrets.randbits(31) or 1
            else:   # the worker index is pid % workers: a cancel finds its way back here
                pid = new_pid(proxy.worker_index, proxy.workers)
            if pid not in self.clients:
                break
        self.clients[pid] = client
        return pid, secrets.randbits(31)

    def unregister(self, client) -> None:
        if self.clients.get(client.pid) is client:
            del self.clients[client.pid]

    async def cancel(self, pid: int, secret: int, forwarded: bool = False) -> None:
        """A CancelRequest: the session's running statement is cancelled when the key
        matches; with several workers, one for another worker's session is handed to it."""
        proxy = self.proxy
        if proxy.workers > 1:
            owner = worker_of(pid, proxy.workers)
            if proxy.metrics is not None and not forwarded:   # counted where it came in
                proxy.metrics.cancel_request("local" if owner == proxy.worker_index
                                             else "forwarded")
            if owner != proxy.worker_index:
                if not forwarded and proxy.link is not None:
                    await proxy.link.forward_cancel(owner, pid, secret)
                return
        c = self.clients.get(pid)
        if c is None or not secrets.compare_digest(c.secret.to_bytes(4, "big"),
                                                    secret.to_bytes(4, "big", signed=True)
                                                    if secret < 0 else secret.to_bytes(4, "big")):
            return
        await c.cancel_running()
