"""`pgshard serve --workers N`: the parent that starts N router processes on one port
(SO_REUSEPORT), forwards SIGHUP, SIGTERM and SIGINT to them and restarts one that dies."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pgshard.config import Config
from pgshard.worker_link import (
    ENV_COUNT,
    ENV_DIR,
    ENV_INDEX,
    ENV_PORT,
    EXEC_PASSWORD_FILE,
    WorkerInfo,
)

log = logging.getLogger("pgshard.workers")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
RESTART_DELAY = 1.0        # seconds before a dead worker is started again, doubling while it
RESTART_DELAY_MAX = 30.0   # keeps dying young, up to this
STABLE_AFTER = 30.0        # a worker that lived this long starts again after RESTART_DELAY
READY_POLL = 0.2           # seconds between looks for a starting worker's socket
PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    failures: int = 0
    restart_at: float | None = None


def restart_delay(failures: int) -> float:
    """Seconds to wait before the failures-th restart in a row of a worker that died young."""
    return min(RESTART_DELAY * 2 ** max(failures - 1, 0), RESTART_DELAY_MAX)


def reload_everywhere(reload):
    """The admin console's RELOAD on one worker: reload here, then have the parent tell the
    other workers (SIGHUP from a worker goes to every worker but the sender)."""
    result = reload()
    os.kill(os.getppid(), signal.SIGHUP)
    return result


def check_workers(config: Config, count: int) -> None:
    """Refuse settings that cannot work with several workers (SystemExit with why)."""
    if ":memory:" in config.store:
        raise SystemExit("pgshard: --workers needs a store the workers share (sqlite file, "
                         "etcd or postgresql): a :memory: store is private to each process")


def serve_worker(config: Config, role: str, config_path: str, info: WorkerInfo) -> None:
    """Run this process as worker info.index: worker 0 keeps the role, the REST sidecar and
    the manager; the others are routers without a sidecar."""
    from pgshard.cli import _run
    from pgshard.runtime import serve_forever

    class _Tag(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.worker = info.index
            return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(_Tag())
    if info.port is not None:
        config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy,
                                                                       port=info.port))
    if info.index > 0:
        role = "router"   # and no sidecar (Runtime): worker 0 serves the REST API
    _run(serve_forever(config, role, config_path=config_path, worker=info))


def supervise(config: Config, config_path: str, role: str, log_level: str | None,
              count: int) -> int:
    """Run count workers until SIGTERM/SIGINT has stopped them all; the exit status."""
    check_workers(config, count)
    run_dir = Path(tempfile.mkdtemp(prefix="pgshard-workers-"))
    secret = run_dir / EXEC_PASSWORD_FILE
    secret.write_text(secrets.token_urlsafe(24))
    secret.chmod(0o600)
    reserved, port = None, None
    if config.proxy.port == 0:
        reserved, port = _reserve_port(config.proxy.host)
    argv = [sys.executable, "-m", "pgshard", "serve", "--config", config_path, "--role", role]
    if log_level:
        argv += ["--log-level", log_level]
    env = {**os.environ, ENV_COUNT: str(count), ENV_DIR: str(run_dir)}
    if port is not None:
        env[ENV_PORT] = str(port)
    info = WorkerInfo(0, count, run_dir, port)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    workers = [_Worker(i) for i in range(count)]
    try:
        for w in workers:
            _spawn(w, argv, env)
        log.info("pgshard: %d workers on %s:%d, pids %s", count, config.proxy.host,
                 port or config.proxy.port, [w.proc.pid for w in workers])
        return _supervise(workers, argv, env, info)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if reserved is not None:
            reserved.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _supervise(workers: list[_Worker], argv: list[str], env: dict, info: WorkerInfo) -> int:
    stopping: int | None = None
    status = 0
    while True:
        now = time.monotonic()
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                code, pid, w.proc = w.proc.returncode, w.proc.pid, None
                # A socket left behind: it was ready (killed before this loop looked).
                w.ever_ready = w.ever_ready or info.socket_path(w.index).exists()
                if stopping is not None:
                    # -SIGTERM: stopped by the forwarded signal before it had set its handlers.
                    if code not in (0, -signal.SIGTERM):
                        status = 1
                        log.warning("worker %d (pid %d) exited with status %s", w.index, pid,
                                    code)
                    continue
                if not w.ever_ready:
                    log.error("worker %d (pid %d) exited with status %s before it was ready: "
                              "stopping all workers", w.index, pid, code)
                    status, stopping = 1, signal.SIGTERM
                    _forward(workers, signal.SIGTERM)
                    continue
                w.failures = 1 if now - w.started >= STABLE_AFTER else w.failures + 1
                delay = restart_delay(w.failures)
                w.restart_at = now + delay
                log.warning("worker %d (pid %d) exited with status %s: restarting it in %gs",
                            w.index, pid, code, delay)
            elif w.proc is not None and not w.ready and info.socket_path(w.index).exists():
                w.ready = w.ever_ready = True
                log.info("worker %d (pid %d) ready", w.index, w.proc.pid)
            if stopping is None and w.proc is None and w.restart_at is not None \
                    and w.restart_at <= now:
                _spawn(w, argv, env)
                log.info("worker %d restarted (pid %d)", w.index, w.proc.pid)
        if stopping is not None and all(w.proc is None for w in workers):
            return status
        pending = [w.restart_at - now for w in workers if w.restart_at is not None]
        starting = any(w.proc is not None and not w.ready for w in workers)
        timeout = min([READY_POLL if starting else 10.0, *[max(p, 0.01) for p in pending]])
        sig = signal.sigtimedwait(SIGNALS, timeout)
        if sig is None or sig.si_signo == signal.SIGCHLD:
            continue
        if sig.si_signo == signal.SIGHUP:
            log.info("SIGHUP: reloading every worker")
            _forward(workers, signal.SIGHUP, skip_pid=sig.si_pid)
            continue
        if stopping is None:
            log.info("pgshard: %s: stopping %d workers", signal.Signals(sig.si_signo).name,
                     len(workers))
        stopping = sig.si_signo
        for w in workers:
            w.restart_at = None
        _forward(workers, sig.si_signo)


def _forward(workers: list[_Worker], signo: int, skip_pid: int | None = None) -> None:
    for w in workers:
        if w.proc is not None and w.proc.poll() is None and w.proc.pid != skip_pid:
            w.proc.send_signal(signo)


def _spawn(w: _Worker, argv: list[str], env: dict) -> None:
    info_path = Path(env[ENV_DIR]) / f"worker-{w.index}.sock"
    info_path.unlink(missing_ok=True)   # left by a worker that was killed
    parent = os.getpid()

    def child() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        # A worker outlives no parent (kill -9 of the parent stops the workers too).
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    w.proc = subprocess.Popen(argv, env={**env, ENV_INDEX: str(w.index)},
                              stdin=subprocess.DEVNULL, preexec_fn=child)
    w.started = time.monotonic()
    w.ready = False
    w.restart_at = None


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """A free port for [proxy] port = 0, held (bound, not listening) with SO_REUSEPORT so
    the workers can bind it too."""
    info = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], info[1], info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    return sock, sock.getsockname()[1]


__all__ = ["WorkerInfo", "check_workers", "reload_everywhere", "restart_delay",
           "serve_worker", "supervise"]
