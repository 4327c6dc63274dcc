"""Login throttling: a per-user lockout with exponential back-off and a per-client-IP budget of
failed logins (a token bucket). Pure and clock-injected; the login handler drives it.

Why two limits: the per-IP budget stops one client from spraying guesses over many accounts
and only ever blocks that client; the per-user lockout stops guesses at one account from
many addresses and so blocks that account from everywhere while it lasts (a deliberate
trade: someone can keep an account locked, but never for longer than `lockout_max` per
`max_failures` guesses, and never learn anything from guessing). Both are in memory, per
sidecar process.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Tracked users and addresses are bounded: the oldest entries are forgotten first.
MAX_TRACKED = 10_000


class LoginThrottled(Exception):
    """A login refused before the password is checked; `retry_after` is in seconds."""

    def __init__(self, reason: str, retry_after: float):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """Retry-After as HTTP wants it: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


@dataclass
class _UserState:
    failures: int = 0          # consecutive failures since the last success
    lockouts: int = 0          # lockouts in this streak: the next one lasts twice as long
    locked_until: float = 0.0
    inflight: int = 0          # attempts whose password is being checked right now
    last_failure: float = 0.0


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass(frozen=True)
class Lockout:
    """A lockout that a failure just started (for the audit trail)."""

    user: str
    failures: int
    seconds: float


@dataclass
class LoginAttempt:
    """A login the limiter let through; report its outcome with succeeded() or failed()."""

    user: str
    ip: str | None
    done: bool = False


class LoginLimiter:
    """Decides whether a login may be checked and learns from its outcome.

    max_failures: consecutive failures of one user before a lockout (0: no per-user limit);
    lockout: the first lockout in seconds, doubled for each further failure, up to
    lockout_max; rate_per_ip: failed logins per minute one address may make (0: no limit).
    A user's streak is forgotten after lockout_max seconds without a failure.
    """

    def __init__(self, *, max_failures: int = 5, lockout: float = 30.0,
                 lockout_max: float = 900.0, rate_per_ip: float = 20.0,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED):
        self.max_failures = max_failures
        self.lockout = lockout
        self.lockout_max = max(lockout, lockout_max)
        self.rate_per_ip = rate_per_ip
        self.clock = clock
        self.max_tracked = max_tracked
        self._users: OrderedDict[str, _UserState] = OrderedDict()
        self._ips: OrderedDict[str, _Bucket] = OrderedDict()

    @classmethod
    def from_settings(cls, sidecar) -> LoginLimiter:
        """From a SidecarConfig's login_* settings."""
        return cls(max_failures=sidecar.login_max_failures, lockout=sidecar.login_lockout,
                   lockout_max=sidecar.login_lockout_max, rate_per_ip=sidecar.login_rate_per_ip)

    # -- the three calls of a login -----------------------------------------------------

    def begin(self, user: str, ip: str | None) -> LoginAttempt:
        """Admit a login attempt or raise LoginThrottled (the password is then not checked)."""
        now = self.clock()
        state = self._user(user, now) if self.max_failures > 0 else None
        if state is not None:
            if state.locked_until > now:
                raise LoginThrottled(f'too many failed logins for user "{user}"; it is locked',
                                     state.locked_until - now)
            # Guesses sent in parallel must not all slip in before the first one fails.
            if state.inflight >= max(1, self.max_failures - state.failures):
                raise LoginThrottled(f'another login for user "{user}" is being checked', 1.0)
        bucket = self._bucket(ip, now)
        if bucket is not None:
            if bucket.tokens < 1.0:
                raise LoginThrottled(f"too many failed logins from {ip}",
                                     (1.0 - bucket.tokens) * 60.0 / self.rate_per_ip)
            bucket.tokens -= 1.0  # reserved; a success gives it back
        if state is not None:
            state.inflight += 1
        return LoginAttempt(user, ip)

    def succeeded(self, attempt: LoginAttempt) -> None:
        """The password was right: the user's streak ends and the address gets its token back."""
        if self._finish(attempt):
            self._users.pop(attempt.user, None)
            bucket = self._ips.get(attempt.ip) if attempt.ip is not None else None
            if bucket is not None:
                bucket.tokens = min(float(self.rate_per_ip), bucket.tokens + 1.0)

    def failed(self, attempt: LoginAttempt) -> Lockout | None:
        """The password was wrong (or the user unknown); the Lockout this starts, if any."""
        if not self._finish(attempt):
            return None
        state = self._users.get(attempt.user)
        if state is None:
            return None
        now = self.clock()
        state.failures += 1
        state.last_failure = now
        if state.failures < self.max_failures:
            return None
        seconds = min(self.lockout * 2.0 ** state.lockouts, self.lockout_max)
        state.lockouts += 1
        state.locked_until = now + seconds
        return Lockout(attempt.user, state.failures, seconds)

    def abandoned(self, attempt: LoginAttempt) -> None:
        """The check did not finish (store down, cancelled): neither outcome is learnt."""
        if self._finish(attempt) and attempt.ip is not None and attempt.ip in self._ips:
            bucket = self._ips[attempt.ip]
            bucket.tokens = min(float(self.rate_per_ip), bucket.tokens + 1.0)

    # -- state ------------------------------------------------------------------------

    def _finish(self, attempt: LoginAttempt) -> bool:
        if attempt.done:
            return False
        attempt.done = True
        state = self._users.get(attempt.user)
        if state is not None and state.inflight > 0:
            state.inflight -= 1
        return True

    def _user(self, user: str, now: float) -> _UserState:
        state = self._users.get(user)
        if state is not None and not state.inflight and state.locked_until <= now and (
                now - state.last_failure > self.lockout_max):
            state = None  # a streak long quiet is forgotten
        if state is None:
            state = self._users[user] = _UserState()
        self._users.move_to_end(user)
        _trim(self._users, self.max_tracked)
        return state

    def _bucket(self, ip: str | None, now: float) -> _Bucket | None:
        if ip is None or self.rate_per_ip <= 0:
            return None
        cap = float(self.rate_per_ip)
        bucket = self._ips.get(ip)
        if bucket is None:
            bucket = self._ips[ip] = _Bucket(cap, now)
        else:
            bucket.tokens = min(cap, bucket.tokens + (now - bucket.stamp) * cap / 60.0)
            bucket.stamp = now
        self._ips.move_to_end(ip)
        _trim(self._ips, self.max_tracked)
        return bucket


def _trim(entries: OrderedDict, limit: int) -> None:
    while len(entries) > limit:
        entries.popitem(last=False)
