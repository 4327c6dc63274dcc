"""One client's transaction as the client sees it: the BEGIN held back until a statement
says where it runs, whether that held transaction already failed, the multi-shard DDL
transaction, and what a ROLLBACK must restore of the session's settings."""

from __future__ import annotations


class TxnState:
    """The one place a session's transaction status comes from (see status())."""

    __slots__ = ("pending", "failed", "multi", "snapshot", "ending_commit", "undo", "undo_failed",
                 "begun", "savepoints")

    def __init__(self):
        self.pending: str | None = None   # the held-back BEGIN (and SETs after it), as SQL
        self.begun: str | None = None     # that SQL once sent: other shards open with it
        self.savepoints: list[str] = []   # SAVEPOINTs standing: a shard joining makes them
        self.failed = False               # the held-back transaction saw an error
        self.multi = None                 # scatter.MultiTxn: DDL inside BEGIN on every shard
        self.snapshot = None              # (client vars, server vars, server) before a SET
        self.ending_commit = False        # the statement on its way is a COMMIT
        # the same before a SET outside a transaction: an error in its unit undoes it
        self.undo = None
        self.undo_failed = False

    def status(self, server) -> bytes:
        """I, T or E: what a ReadyForQuery made here tells the client."""
        multi = self.multi
        if multi is not None:
            return b"E" if multi.failed else b"T"
        if self.pending is not None:     # even with a server that only looked
            return b"E" if self.failed else b"T"
        if server is not None:
            return server.txn_status
        return b"I"

    def savepoint(self, sql: str, word: str) -> None:
        """Track SAVEPOINT name / RELEASE [SAVEPOINT] name (a released one goes with every
        later one, as in PostgreSQL)."""
        from pgshard.sql import lex
        toks = [t.text for t in lex.tokens(sql)][1:]
        if toks and toks[0].upper() == "SAVEPOINT":
            toks = toks[1:]
        if not toks:
            return
        mark = "SAVEPOINT " + toks[0]
        if word == "SAVEPOINT":
            self.savepoints.append(mark)
        elif mark in self.savepoints:
            del self.savepoints[len(self.savepoints) - 1 - self.savepoints[::-1].index(mark):]

    def held(self) -> bytes | None:
        """While a BEGIN is held back, the status a server's ReadyForQuery must report."""
        if self.pending is None:
            return None
        return b"E" if self.failed else b"T"

    def hold(self, begin_sql: str) -> None:
        self.pending = begin_sql
        self.failed = False

    def opened(self) -> None:
        """The held BEGIN was sent to the server that runs the transaction."""
        self.pending = None
        self.failed = False

    def fail(self) -> None:
        """An error inside the held (or multi-shard) transaction: only COMMIT/ROLLBACK may
        follow, and COMMIT rolls back."""
        if self.pending is not None:
            self.failed = True
        if self.multi is not None:
            self.multi.failed = True
