"""A session's settings: SET/RESET/DISCARD tracked and replayed on whichever server
serves the client, and the proxy's own pgshard.* settings."""

from __future__ import annotations

from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    InvalidSqlStatementName,
    NoActiveSqlTransaction,
    UndefinedObject,
)
from pgshard.proxy.units import quote_literal
from pgshard.sql import classify as r
from pgshard.sql.settings import loaded_prefix


class SessionStateMixin:
    """The session's settings: SET/RESET/DISCARD tracked and replayed on whichever server
    serves it, and the pgshard.* settings the proxy answers itself."""

    def _track(self, s, plan: r.Plan) -> None:
        """Session state a statement changes, kept to replay it on other servers."""
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
                self._set_var(plan.name, plan.value)
                s.note_setting(plan.name, plan.value)
                self.param_watch.add(plan.name)
            else:   # RESET, SET … TO DEFAULT: back to what the client connected with
                self._reset_var(plan.name, s)
                self.param_watch.discard(plan.name)
        elif kind == r.DISCARD_ALL:
            s.forget_session()
            self._discard_all()
        elif kind == r.COMMIT or kind == r.ROLLBACK:
            self.txn.ending_commit = kind == r.COMMIT and s.txn_status == b"T"
        elif plan.is_ddl:
            # Plans prepared before a schema change must not be reused under the same name.
            self.proxy.statements.invalidate()
            self.proxy.forget_key_positions()

    def _set_pgshard(self, plan: r.Plan) -> str:
        name = plan.name
        if name not in r.PGSHARD_SETTINGS:
            raise UndefinedObject(f'unrecognized configuration parameter "pgshard.{name}"',
                                  hint="pgshard settings: " + ", ".join(
                                      "pgshard." + n for n in r.PGSHARD_SETTINGS))
        if plan.kind == r.RESET_PGSHARD:
            if name == "shard_key":
                self.session_key = self.local_key = None
            elif name == "shard":
                self.session_shard = None
            else:
                self.consistency = self.user.default_consistency if self.user else "strong"
            return "RESET"
        value = plan.value   # one literal, number or word, decoded by routing.plan
        if value is None:    # SET … TO DEFAULT
            return self._set_pgshard(r.Plan(r.RESET_PGSHARD, name=name))
        local = plan.consistency == "local"
        if name == "shard_key":
            if local:
                if self._status() == b"I":
                    self.write(m.warning_from(NoActiveSqlTransaction(
                        "SET LOCAL can only be used in transaction blocks")))
                else:
                    self.local_key = value.encode()
            else:
                self.session_key = value.encode()
        elif name == "shard":
            self.proxy.catalog.shard(value)
            self.session_shard = value
        else:
            self.consistency = r.check_consistency(value)
        return "SET"

    def _show_pgshard(self, name: str) -> str | None:
        if name == "shard_key":
            key = self.local_key if self.local_key is not None else self.session_key
            return None if key is None else key.decode(errors="replace")
        if name == "shard":
            return self.session_shard
        if name == "consistency":
            return self.consistency
        raise UndefinedObject(f'unrecognized configuration parameter "pgshard.{name}"',
                              hint="pgshard settings: " + ", ".join(
                                  "pgshard." + n for n in r.PGSHARD_SETTINGS))

    def _set_var(self, name: str, value: str) -> None:
        self.vars[name] = value
        self.vars_gen += 1

    def _reset_var(self, name: str, s) -> None:
        """Track RESET; s is the server that ran it (None when it is still held back)."""
        if name == "all":
            self.vars = {k: quote_literal(v) for k, v in self.startup_vars.items()}
            if s is not None:
                s.note_setting("all", None)
        else:
            if name in self.startup_vars:
                self.vars[name] = quote_literal(self.startup_vars[name])
            else:
                self.vars.pop(name, None)
            if s is not None:
                s.note_setting(name, None)
        self.vars_gen += 1

    def _loaded(self, s, sql: str) -> None:
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
            self.vars_gen += 1

    def _deallocate(self, name: str | None) -> None:
        if name is None:
            self.stmts.clear()
        elif self.stmts.pop(name, None) is None:
            raise InvalidSqlStatementName(f'prepared statement "{name}" does not exist')

    def _discard_all(self) -> None:
        self.stmts.clear()
        self.sql_prepared.clear()
        self.vars = {k: quote_literal(v) for k, v in self.startup_vars.items()}
        self.vars_gen += 1
        self.session_key = self.local_key = self.session_shard = None

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
            self.vars = undo[0]
            self.vars_gen += 1
            if undo[2] is s:
                s.settings_unsure(set(undo[1]) | set(s.vars))

    def sync_vars_on(self, s) -> None:
        self._sync_vars(s)

    def _sync_vars(self, s) -> None:
        snap = self.txn.snapshot
        if self.txn.pending is not None and snap is not None and snap[2] is None:
            # The held-back BEGIN carries SETs of its own: outside it, the settings of
            # before it (they are set inside the transaction, see _send_begin).
            s.apply_settings(snap[0], (self, -1))
            return
        s.apply_settings(self.vars, (self, self.vars_gen))

