"""A session's settings: SET/RESET/DISCARD tracked and replayed on whichever server
serves the client, and the proxy's own pgshard.* settings."""

from __future__ import annotations

from pgshard.protocol import messages as m
from pgshard.protocol.errors import NoActiveSqlTransaction, UndefinedObject
from pgshard.proxy.units import quote_literal
from pgshard.sql import classify as r
from pgshard.sql.settings import loaded_prefix


def _unknown_pgshard(name: str) -> UndefinedObject:
    return UndefinedObject(f'unrecognized configuration parameter "pgshard.{name}"',
                           hint="pgshard settings: " + ", ".join(
                               "pgshard." + n for n in r.PGSHARD_SETTINGS))


class SessionSettings:
    """The settings of one ClientSession (held as `session.settings`): what the client sent
    in its startup packet (`startup`), what it has set since (`vars`: name -> the value as
    SQL, replayed with SET), a generation counter `gen` bumped on every change (a server
    synced at (settings, gen) needs no replay), and the names whose ParameterStatus is
    awaited (`watch`). The pgshard.* settings are routing inputs and stay on the session
    (session_key, local_key, session_shard, consistency); they are set and shown here."""

    __slots__ = ("session", "txn", "startup", "vars", "gen", "watch")

    def __init__(self, session):
        self.session = session
        self.txn = session.txn
        self.startup: dict[str, str] = {}
        self.vars: dict[str, str] = {}
        self.gen = 0
        self.watch: set[str] = set()   # SET just sent: adopt the value it reports

    # ------------------------------------------------------------ client statements

    def connected(self, startup: dict[str, str]) -> None:
        """The startup packet's settings: the session's own defaults from now on."""
        self.startup = startup
        self.vars = {k: quote_literal(v) for k, v in startup.items()}
        self.gen += 1

    def track(self, s, plan: r.Plan) -> None:
        """Session state a statement sent to s changes, kept to replay it on other servers."""
        kind = plan.kind
        if kind == r.SET or kind == r.RESET or plan.config:
            txn = self.txn
            if s.txn_status != b"I":
                if txn.snapshot is None:
                    # A SET inside a transaction is undone by ROLLBACK: remember the before.
                    txn.snapshot = (dict(self.vars), dict(s.vars), s)
            elif txn.undo is None:
                # Outside one, the SET's own unit is its transaction: an error in it (the
                # SET's own, say a bad value) undoes it.
                txn.undo = (dict(self.vars), dict(s.vars), s)
                txn.undo_failed = False
            if (kind == r.SET or plan.config) and plan.value is not None:
                self.set(plan.name, plan.value)
                s.note_setting(plan.name, plan.value)
                self.watch.add(plan.name)
            else:   # RESET, SET … TO DEFAULT: back to what the client connected with
                self.reset(plan.name, s)
                self.watch.discard(plan.name)
        elif kind == r.DISCARD_ALL:
            s.forget_session()
            self.session.discard_all()
        elif kind == r.COMMIT or kind == r.ROLLBACK:
            self.txn.ending_commit = kind == r.COMMIT and s.txn_status == b"T"
        elif plan.is_ddl:
            # Plans prepared before a schema change must not be reused under the same name.
            proxy = self.session.proxy
            proxy.statements.invalidate()
            proxy.forget_key_positions()

    def set(self, name: str, value: str) -> None:
        self.vars[name] = value
        self.gen += 1

    def reset(self, name: str, s) -> None:
        """Track RESET; s is the server that ran it (None when it is still held back)."""
        if name == "all":
            self.vars = {k: quote_literal(v) for k, v in self.startup.items()}
            if s is not None:
                s.note_setting("all", None)
        else:
            if name in self.startup:
                self.vars[name] = quote_literal(self.startup[name])
            else:
                self.vars.pop(name, None)
            if s is not None:
                s.note_setting(name, None)
        self.gen += 1

    def restore(self, vars_: dict[str, str]) -> None:
        """The settings of before a transaction that was rolled back."""
        self.vars = vars_
        self.gen += 1

    def discard(self) -> None:
        """DISCARD ALL: back to the startup packet's settings, no pgshard.* setting."""
        self.restore({k: quote_literal(v) for k, v in self.startup.items()})
        session = self.session
        session.session_key = session.local_key = session.session_shard = None

    def loaded(self, s, sql: str) -> None:
        """LOAD 'library' on s removes the placeholder settings of the prefix the library
        reserves: no longer tracked here nor on s (a failed LOAD keeps them on s, which
        stays pinned to this client and is reset with DISCARD ALL when released)."""
        prefix = loaded_prefix(sql)
        if prefix is None:
            return
        gone = [k for k in self.vars if k.startswith(prefix + ".")]
        for k in gone:
            del self.vars[k]
            s.note_setting(k, None)
        if gone:
            self.gen += 1

    # ------------------------------------------------------------ pgshard.* settings

    def set_pgshard(self, plan: r.Plan) -> str:
        """SET / RESET pgshard.NAME, answered by the proxy: the command tag."""
        session = self.session
        name = plan.name
        if name not in r.PGSHARD_SETTINGS:
            raise _unknown_pgshard(name)
        if plan.kind == r.RESET_PGSHARD:
            if name == "shard_key":
                session.session_key = session.local_key = None
            elif name == "shard":
                session.session_shard = None
            else:
                session.consistency = (session.user.default_consistency if session.user
                                       else "strong")
            return "RESET"
        value = plan.value   # one literal, number or word, decoded by routing.plan
        if value is None:    # SET … TO DEFAULT
            return self.set_pgshard(r.Plan(r.RESET_PGSHARD, name=name))
        local = plan.consistency == "local"
        if name == "shard_key":
            if local:
                if session._status() == b"I":
                    session.write(m.warning_from(NoActiveSqlTransaction(
                        "SET LOCAL can only be used in transaction blocks")))
                else:
                    session.local_key = value.encode()
            else:
                session.session_key = value.encode()
        elif name == "shard":
            session.proxy.catalog.shard(value)
            session.session_shard = value
        else:
            session.consistency = r.check_consistency(value)
        return "SET"

    def show_pgshard(self, name: str) -> str | None:
        session = self.session
        if name == "shard_key":
            key = session.local_key if session.local_key is not None else session.session_key
            return None if key is None else key.decode(errors="replace")
        if name == "shard":
            return session.session_shard
        if name == "consistency":
            return session.consistency
        raise _unknown_pgshard(name)

    # ------------------------------------------------------------ servers

    def adopt(self, s, name: str, value: str) -> None:
        """The server reports the value a setting of this client now has (DateStyle after
        SET datestyle TO ymd is 'ISO, YMD', not 'ymd'): that value is what is replayed.
        The last report of the unit counts (the watch ends at its idle point): a replay of
        the setting sent before the SET reports too, and first."""
        key = name.lower()
        if key in self.watch and key in self.vars:
            v = quote_literal(value)
            s.note_setting(key, v)
            if self.vars[key] != v:
                self.vars[key] = v
                self.gen += 1

    def unit_over(self, s) -> None:
        """s reached an idle point: the watch ends; a SET's unit that failed is undone; a
        transaction rolled back takes its SETs with it."""
        if self.watch:
            self.watch.clear()
        txn = self.txn
        if txn.undo is not None:
            self._settle_undo(s)
        snap = txn.snapshot
        if snap is not None and s.txn_status == b"I":
            txn.snapshot = None
            if not txn.ending_commit:
                # Rolled back: PostgreSQL undid the SETs, and so does the replay state.
                self.restore(snap[0])
                if snap[2] is s:
                    s.restore_settings(snap[1])
            txn.ending_commit = False

    def _settle_undo(self, s) -> None:
        """The unit that ran a SET outside a transaction is over (s is idle): keep the SET,
        or, when the unit failed, forget it. The server may have run part of the unit
        (pipelines), so what it holds of those settings is set again on next use."""
        txn = self.txn
        undo = txn.undo
        txn.undo = None
        if s.txn_status != b"I":   # the unit opened a transaction: ROLLBACK decides
            if txn.snapshot is None:
                txn.snapshot = undo
            return
        if txn.undo_failed:
            self.restore(undo[0])
            if undo[2] is s:
                s.settings_unsure(set(undo[1]) | set(s.vars))

    def sync(self, s) -> None:
        """Make s hold this client's settings (a swallowed SET/RESET when they differ)."""
        txn = self.txn
        snap = txn.snapshot
        if txn.pending is not None and snap is not None and snap[2] is None:
            # The held-back BEGIN carries SETs of its own: outside it, the settings of
            # before it (they are set inside the transaction, see attachment.send_begin).
            s.apply_settings(snap[0], (self, -1))
            return
        s.apply_settings(self.vars, (self, self.gen))

    def synced(self, s) -> bool:
        """s holds this client's settings already (nothing to replay)."""
        return s.synced == (self, self.gen)
