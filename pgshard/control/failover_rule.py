"""The failover decision, pure: whether a shard's primary has failed and which replica to
promote, from health, WAL position and synchronous-replication facts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NONE, PROMOTE, REFUSE = "none", "promote", "refuse"


@dataclass(frozen=True)
class NodeFacts:
    """What the last checks said about one server."""

    dsn: str
    reachable: bool                   # the manager's last check of it succeeded
    failures: int = 0                 # consecutive failed checks
    in_recovery: bool | None = None
    replay_lsn: int | None = None
    receive_lsn: int | None = None    # WAL flushed by its receiver (replayed on promotion)
    streaming: bool | None = None     # its WAL receiver streams from the primary now
    app_name: str | None = None       # the name it streams under (cluster_name)

    @property
    def position(self) -> int | None:
        """How far it gets once promoted: everything received is replayed first."""
        known = [x for x in (self.replay_lsn, self.receive_lsn) if x is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class ShardFacts:
    name: str
    primary: NodeFacts
    replicas: tuple[NodeFacts, ...]
    sync: frozenset[str] = frozenset()  # replica DSNs an acknowledged commit waits for
    sync_quorum: int = 0                # ANY sync_quorum of them; 0: asynchronous


@dataclass(frozen=True)
class Decision:
    action: str            # NONE | PROMOTE | REFUSE
    reason: str
    candidate: str | None = None


def primary_failed(facts: ShardFacts, threshold: int) -> tuple[bool, str]:
    """Whether the primary counts as failed, and why (or why not).

    Failed only when the manager's last `threshold` checks of it failed AND every replica
    the manager can reach says its WAL receiver lost the primary: a manager-side network
    problem alone never promotes. With no replica reachable nothing can be confirmed."""
    p = facts.primary
    if p.reachable:
        return False, "the primary answers"
    if p.failures < threshold:
        return False, f"{p.failures} of {threshold} checks of the primary failed"
    seen = [r for r in facts.replicas if r.reachable]
    if not seen:
        return False, "no replica is reachable to confirm that the primary is down"
    streaming = [r.dsn for r in seen if r.streaming]
    if streaming:
        return False, (f"the manager cannot reach the primary but {len(streaming)} replica(s) "
                       "still stream from it")
    return True, (f"{p.failures} consecutive checks of the primary failed and no replica "
                  "streams from it")


def choose(facts: ShardFacts, *, to: str | None = None, caught_up: bool = False) -> Decision:
    """The replica to promote, or why none may be.

    Healthy candidates are reachable standbys with a known WAL position; the highest
    position wins (ties: the DSN that sorts first). With synchronous replication an
    acknowledged commit is on at least sync_quorum of the sync standbys, so only one of
    them qualifies, and only when at least len(sync) - sync_quorum + 1 of them are
    reachable (otherwise the one holding a commit may be the unreachable one). `to` names
    the replica the operator wants; `caught_up` says it already replayed everything the
    primary wrote (a switchover), which lifts the synchronous rule."""
    healthy = [r for r in facts.replicas
               if r.reachable and r.in_recovery is not False and r.position is not None]
    if facts.sync_quorum > 0 and not caught_up:
        members = [r for r in facts.replicas if r.dsn in facts.sync]
        reachable = [r for r in healthy if r.dsn in facts.sync]
        need = len(members) - facts.sync_quorum + 1
        if not members:
            return Decision(REFUSE, "synchronous replication is on but no replica of the "
                            "catalog is a synchronous standby; not promoting one that may "
                            "miss acknowledged commits")
        if len(reachable) < need:
            return Decision(REFUSE, f"only {len(reachable)} of {len(members)} synchronous "
                            f"standbys are healthy and {need} are needed to be sure one holds "
                            "every acknowledged commit; not promoting")
        healthy = reachable
    if to is not None:
        target = next((r for r in facts.replicas if r.dsn == to), None)
        if target is None:
            return Decision(REFUSE, f"{to} is not a replica of shard {facts.name}")
        if target not in healthy:
            return Decision(REFUSE, f"{to} is not a healthy "
                            f"{'synchronous ' if facts.sync_quorum and not caught_up else ''}"
                            "standby")
        if not caught_up and target.position < max(r.position for r in healthy):
            return Decision(REFUSE, f"{to} is behind another healthy replica; promoting it "
                            "would lose what only the other one has")
        return Decision(PROMOTE, "the requested replica", to)
    if not healthy:
        return Decision(REFUSE, "no healthy replica to promote")
    best = min(healthy, key=lambda r: (-r.position, r.dsn))
    return Decision(PROMOTE, "the healthy replica with the highest WAL position"
                    + (" among the synchronous standbys" if facts.sync_quorum else ""),
                    best.dsn)


def decide(facts: ShardFacts, threshold: int) -> Decision:
    """The automatic decision of one monitoring round for one shard."""
    failed, why = primary_failed(facts, threshold)
    if not failed:
        return Decision(NONE, why)
    choice = choose(facts)
    if choice.action == PROMOTE:
        return Decision(PROMOTE, f"{why}; promoting {choice.reason}", choice.candidate)
    return Decision(REFUSE, f"{why}; {choice.reason}")


_SYNC_NAMES = re.compile(r"^\s*(?:(ANY|FIRST)\s+)?(?:(\d+)\s*\((.*)\)|(.*))\s*$",
                         re.IGNORECASE | re.DOTALL)


def parse_sync_names(setting: str | None) -> tuple[int, tuple[str, ...]]:
    """(quorum, standby names) of a synchronous_standby_names value; (0, ()) when empty.

    `ANY k (a, b)` and `FIRST k (a, b)` / `k (a, b)` both mean a commit is on at least k
    of the listed standbys (FIRST's choice among them changes as they come and go); a bare
    list `a, b` is FIRST 1. `*` matches every standby."""
    if not setting or not setting.strip():
        return 0, ()
    m = _SYNC_NAMES.match(setting)
    if m is None:
        return 0, ()
    if m.group(2) is not None:
        k, body = int(m.group(2)), m.group(3)
    else:
        k, body = 1, m.group(4)
    names = tuple(_unquote(n) for n in _split_names(body))
    return (k if names else 0), names


def _split_names(body: str) -> Iterable[str]:
    name, quoted = "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
            name += ch
        elif ch == "," and not quoted:
            yield name.strip()
            name = ""
        else:
            name += ch
    if name.strip():
        yield name.strip()


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"')
    return name.lower()  # unquoted names are case-insensitive, like identifiers


def sync_members(setting: str | None, app_names: Mapping[str, str | None]
                 ) -> tuple[tuple[str, ...], int]:
    """(replica DSNs a commit may wait for, quorum) given the primary's
    synchronous_standby_names and each replica DSN's application name."""
    k, names = parse_sync_names(setting)
    if k == 0:
        return (), 0
    wanted = {n if n == "*" else n.lower() for n in names}
    members = tuple(sorted(dsn for dsn, app in app_names.items()
                           if "*" in wanted or (app is not None and app.lower() in wanted)))
    return members, k
