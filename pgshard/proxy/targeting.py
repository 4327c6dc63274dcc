"""Where a session's statement goes: the shard (hints, SET pgshard.*, a bound key, the
key read from the SQL), the role (primary or a healthy replica), or a fan-out."""

from __future__ import annotations

from pgshard.protocol.errors import FeatureNotSupported, InvalidParameterValue
from pgshard.proxy import fence
from pgshard.proxy.units import READ_ONLY, Fanout, NeedColumns
from pgshard.ring import hashing
from pgshard.sql import analysis as sp
from pgshard.sql import classify as r
from pgshard.sql import fastkey
from pgshard.sql.relations import user_relations
from pgshard.sql.sql_prepare import NOT_CONSTANT, execute_call, prepared_statement


class Targeting:
    """Where one ClientSession's statements go (held as `session.targeting`): target() gives
    the shard (a name) or a Fanout, role_for() the primary or a replica, any_shard() the
    client's own pick for statements that touch no shard data. It reads the session's
    routing inputs (hints, the pgshard.* settings, its server and transaction)."""

    __slots__ = ("session", "any_pick")

    def __init__(self, session):
        self.session = session
        self.any_pick: str | None = None    # the shard any_shard chose for this statement

    def any_shard(self) -> str:
        """A shard for statements that touch no shard data (Parse/Describe without a key,
        SELECT 1, SHOW): this client's own pick among the shards whose primary answers,
        so that no one shard is needed by everyone."""
        session = self.session
        if session.session_shard:
            return session.session_shard
        multi = session.txn.multi
        if multi is not None and multi.shards and not multi.implicit:
            return multi.shards[0]   # the client's transaction on several shards: its first
        if session.ext.unit_shard is not None:   # a pipeline already bound to a shard stays there
            return session.ext.unit_shard
        if session.server is not None:       # so does a client that holds a server
            return session.shard
        if session.att.parked:                   # or whose state a server keeps
            return next(reversed(session.att.parked))[0]
        cat = session.proxy.catalog
        shards = cat.serving_shards() or cat.shard_names()   # a new shard may lack the schema
        n = len(shards)
        start = session.pid % n if n > 1 else 0
        for i in range(n):
            name = shards[(start + i) % n]
            if n == 1 or session.proxy.pool_for(name, session.user, database=session.database).healthy():
                break
        else:
            name = shards[start]
        self.any_pick = name
        return name

    def other_shard(self, failed: str) -> str | None:
        """After the shard _any_shard chose could not be reached: another healthy one."""
        session = self.session
        if session.session_shard or self.any_pick != failed:
            return None
        cat = session.proxy.catalog
        for name in cat.serving_shards() or cat.shard_names():
            if name != failed and session.proxy.pool_for(name, session.user, database=session.database).healthy():
                self.any_pick = name
                return name
        return None

    def target(self, plan: r.Plan, bind=None, st=None, sql: str | None = None):
        """Where a statement goes: a shard (its name), a Fanout, or a Wait (NeedColumns, a
        fence's FenceHeld: await it, then route the statement again). Precedence: hints,
        then SET pgshard.*, then a named parameter, then the key read from the SQL."""
        session = self.session
        self.any_pick = None
        cat = session.proxy.catalog
        if cat.fences:   # resharding: keys in a moving range wait for the new owner
            wait = fence.hold_if_fenced(session, plan, bind, st, sql)
            if wait is not None:
                return wait
        if plan.shard is not None:
            cat.shard(plan.shard)  # raises for an unknown shard
            return self._explicit(plan.shard, "the /* shard */ hint", plan, bind, st, sql)
        key = plan.shard_key
        if key is None and plan.key_param is not None and bind is not None:
            i = plan.key_param - 1
            if i >= len(bind.params):
                raise InvalidParameterValue(
                    f"shard_key_param {plan.key_param} names a parameter the statement does "
                    f"not have ({len(bind.params)} bound)")
            v = bind.params[i]
            if v is None:   # matches no row anywhere: any shard answers as one database would
                return self.any_shard()
            key = hashing.key_from_param(v, bind.param_format(i), st.param_oid(i))
        how = "the shard_key hint"
        if key is None:
            key = session.local_key if session.local_key is not None else session.session_key
            how = "SET pgshard.shard_key"
        if key is not None:
            return self._explicit(cat.ring.owner(hashing.token(key)), how, plan, bind, st, sql)
        if session.session_shard is not None:
            return self._explicit(session.session_shard, "SET pgshard.shard", plan, bind, st, sql)
        if len(cat.shards) == 1:
            return cat.shards[0].name
        if plan.kind != r.STATEMENT:
            return self.any_shard()
        if plan.first_word in ("PREPARE", "EXECUTE") and not plan.multi:
            return self.sql_prepared_route(plan, sql if sql is not None else st.sql)
        return self._auto_route(sql if sql is not None else st.sql, bind, st)

    def sql_prepared_route(self, plan: r.Plan, sql: str) -> str | NeedColumns:
        """An SQL PREPARE defines a statement and touches no row: the client's own shard
        (its server keeps it). An EXECUTE goes where its statement would with its
        arguments (the PREPARE is made there too, see ServerAttachment.replay_sql_prepare)."""
        session = self.session
        if plan.first_word == "PREPARE":
            return self.any_shard()
        call = execute_call(sql)
        text = session.sql_prepared.get(call[0]) if call is not None else None
        got = prepared_statement(text) if text else None
        if got is None:
            return self.any_shard()   # unknown here: the server answers (26000)
        name, args = call
        a = self.analyze(got[1])
        if type(a) is NeedColumns:
            return a
        if not a.tables:
            return self.any_shard()
        if a.keys is None:
            raise FeatureNotSupported(
                f"EXECUTE {name}: its statement has no shard key on {', '.join(a.tables)}, "
                "and an SQL-prepared statement runs on one shard",
                hint="run the statement itself (it fans out), or use the driver's prepared "
                     "statements (protocol level)")
        if any(k.param is not None and k.param <= len(args) and args[k.param - 1] is NOT_CONSTANT
               for k in a.keys):
            raise FeatureNotSupported(
                f"EXECUTE {name}: the shard key argument must be a constant",
                hint="pass the key as a literal, or use the driver's prepared statements")
        params = tuple(b"" if v is NOT_CONSTANT else v for v in args)
        ring = session.proxy.catalog.ring
        owners = sorted({ring.owner(hashing.token(k.resolve(params, (), ())))
                         for k in a.keys
                         if k.param is None or k.param > len(params) or params[k.param - 1] is not None})
        if not owners:
            return self.any_shard()
        if len(owners) > 1:
            raise r.CrossShardTransaction(
                f"EXECUTE {name}: its arguments name keys on {len(owners)} shards "
                f"({', '.join(owners)})", hint="execute it once per shard's keys")
        return owners[0]

    def _explicit(self, shard: str, how: str, plan: r.Plan, bind, st,
                  sql: str | None) -> str | NeedColumns:
        """An explicit choice of shard, checked for writes: a row the SQL names by its key
        goes only to the shard that owns that key, or a keyed read could never find it."""
        session = self.session
        if plan.kind != r.STATEMENT or plan.is_read or plan.is_ddl or plan.multi:
            return shard
        cat = session.proxy.catalog
        if len(cat.shards) == 1 or not cat.tables:
            return shard
        sql = sql if sql is not None else st.sql
        proxy = session.proxy
        positions = proxy.key_positions_of(session.database)[1]
        if bind is None and fastkey.route(sql, cat, positions) == shard:
            return shard
        a = self.analyze(sql, st)
        if type(a) is NeedColumns:
            return a
        if a.keys is None or a.kind not in (sp.INSERT, sp.UPDATE, sp.DELETE):
            return shard
        owners = self._key_owners(a, bind, st)
        if owners and owners != [shard]:
            elsewhere = [o for o in owners if o != shard]
            raise FeatureNotSupported(
                f"this write names shard key values owned by shard {', '.join(elsewhere)}, "
                f"but {how} sends it to shard {shard}: the row would be out of reach of every "
                "statement routed by its key",
                hint="leave the routing of writes to the key in the statement (or give the "
                     "row's own key in /* shard_key: … */)")
        return shard

    def analyze(self, sql: str, st=None):
        """The pglast analysis of sql, or NeedColumns: an INSERT without a column list first
        needs the key column's position in its table (the session learns it and retries).
        A prepared statement st whose text sql is keeps its analysis: no cache lookup of
        the text per execution."""
        session = self.session
        proxy = session.proxy
        known, positions = proxy.key_positions_of(session.database)
        tables = proxy.catalog.tables
        own = st is not None and st.sql is sql
        memo = st.analysis if own else None
        if memo is not None and memo[0] is tables and memo[1] is positions:
            a = memo[2]
        else:
            a = sp.analyze(sql, tables, positions)
            if own:
                st.analysis = (tables, positions, a)
        if a.kind == sp.INSERT and a.keys is None and a.tables:
            missing = [t for t in a.tables if t not in known]
            if missing:
                return NeedColumns(missing)
        return a

    def _key_owners(self, a, bind, st) -> list[str]:
        """The shards that own the keys an analysis found, sorted."""
        session = self.session
        ring = session.proxy.catalog.ring
        params = bind.params if bind is not None else ()
        formats = bind.param_formats if bind is not None else ()
        oids = st.param_oids(len(params)) if st is not None else ()
        # A NULL key (`key = $1` bound to NULL) matches no row: it names no shard.
        keys = [k for k in a.keys
                if k.param is None or k.param > len(params) or params[k.param - 1] is not None]
        if len(keys) == 1:   # the common case: no set to build and sort
            return [ring.owner(hashing.token(keys[0].resolve(params, formats, oids)))]
        return sorted({ring.owner(hashing.token(k.resolve(params, formats, oids)))
                       for k in keys})

    @staticmethod
    def _explain_fanout(a, shards: list[str]) -> Fanout:
        """EXPLAIN of a statement that runs on several shards: every shard's plan."""
        if a.refuse:
            raise FeatureNotSupported(a.refuse, hint="EXPLAIN without ANALYZE shows every "
                                      "shard's plan; give the key to run it on its shard")
        return Fanout("explain", shards, a)

    def role_for(self, shard: str, plan: r.Plan, sql: str) -> str:
        """primary, or replica:<i> for a read under eventual/session consistency (also a
        whole BEGIN READ ONLY transaction: a write in it gets the replica's own error)."""
        session = self.session
        s = session.server
        if s is not None and s.txn_status != b"I":
            return session.role      # inside a transaction: it stays where it is
        cons = plan.consistency or session.consistency
        mon = session.proxy.replicas
        if cons == "strong" or mon is None or session.pool_mode == "session":
            return "primary"
        read_only_txn = session.txn.pending is not None and \
            READ_ONLY.search(session.txn.pending) is not None
        if session.txn.pending is not None and not read_only_txn:
            return "primary"
        if s is not None and session.role != "primary" and s.expect:
            return "primary"
        if not read_only_txn:
            if plan.kind not in (r.STATEMENT, r.SHOW):
                return "primary"
            if plan.kind == r.STATEMENT:
                if plan.first_word not in ("SELECT", "WITH", "VALUES", "TABLE"):
                    return "primary"
                a = sp.analyze(sql, session.proxy.catalog.tables)
                if a.kind != sp.SELECT or a.locking:
                    return "primary"   # includes SQL that does not parse: never a replica
        if cons == "session":
            t = session.last_write.get(shard)
            if t is not None:
                lsn = mon.primary_lsn_since(shard, t)
                if lsn is None:
                    return "primary"
                i = mon.choose(shard, min_lsn=lsn)
            else:
                i = mon.choose(shard)
        else:
            i = mon.choose(shard)
        return "primary" if i is None else f"replica:{i}"

    def _auto_route(self, sql: str, bind, st):
        """Route by what the SQL says (pglast): keys in WHERE / VALUES, or a fan-out."""
        session = self.session
        cat = session.proxy.catalog
        proxy = session.proxy
        if bind is None:
            shard = fastkey.route(sql, cat, proxy.key_positions_of(session.database)[1])
            if shard is not None:
                return shard
        a = self.analyze(sql, st)
        if type(a) is NeedColumns:
            return a
        if a.updates_key:
            raise FeatureNotSupported(
                "UPDATE changes the shard key column; that would move the row to another shard",
                hint="DELETE the row and INSERT it with its new key")
        if a.keys is not None:
            owners = self._key_owners(a, bind, st)
            if not owners:
                return self.any_shard()
            if len(owners) == 1:
                return owners[0]
            if a.kind == sp.EXPLAIN:
                return self._explain_fanout(a, owners)
            if a.kind == sp.SELECT and not a.locking:
                if a.refuse:
                    raise FeatureNotSupported(f"cannot run this query across shards: {a.refuse}")
                return Fanout("read", owners, a)
            if a.insert_rows and bind is not None and session.proxy.twophase is not None:
                return Fanout("insert", owners, a)   # rows split with their parameters
            if a.insert_rows and bind is None and (
                    session.server is None and session.txn.pending is None
                    or session.proxy.twophase is not None):
                groups: dict[str, list[int]] = {}
                for k, row in a.insert_rows:
                    owner = cat.ring.owner(hashing.token(k.resolve()))
                    groups.setdefault(owner, []).append(row)
                return Fanout("insert", sorted(groups), a, groups)
            if a.insert_rows:
                raise FeatureNotSupported(
                    f"this multi-row INSERT spans {len(owners)} shards; it is split per shard "
                    "only as a simple-protocol statement outside a transaction",
                    hint="insert the rows of each shard in its own statement")
            if a.kind in (sp.UPDATE, sp.DELETE) and session.proxy.twophase is not None:
                return Fanout("write", owners, a)   # each owner matches only its own rows
            if a.kind == sp.INSERT:
                raise r.CrossShardTransaction(
                    f"this INSERT … SELECT writes rows of {len(owners)} shards "
                    f"({', '.join(owners)}); it cannot be split by key (the order of its "
                    "RETURNING rows would be lost)",
                    hint="insert the rows of each shard in its own statement, or as INSERT … "
                         "VALUES (SQLAlchemy: create_engine(…, use_insertmanyvalues=False))")
            raise r.CrossShardTransaction(
                f"this statement touches keys on {len(owners)} shards ({', '.join(owners)}) "
                "and cannot be split by key",
                hint="write the rows of each shard in its own statement")
        if a.kind == sp.UNPARSED:
            # Never guess: unparsable SQL goes to a primary, where it will most likely fail.
            return self.any_shard()
        if a.tables:
            if a.kind == sp.SELECT and not a.locking:
                if a.refuse:
                    raise FeatureNotSupported(f"cannot run this query across shards: {a.refuse}")
                return Fanout("read", list(cat.serving_shards()), a)
            if a.kind == sp.DDL:
                return Fanout("ddl", [sh.name for sh in cat.shards], a)
            if a.kind == sp.LOCK:
                if session.txn.pending is None and session.txn.multi is None and (
                        session.server is None or session.server.txn_status == b"I"):
                    return self.any_shard()   # outside a transaction: PostgreSQL's own error
                return Fanout("lock", list(cat.serving_shards()), a)
            if a.kind == sp.COPY_OUT:
                if a.refuse:
                    raise FeatureNotSupported(a.refuse)
                return Fanout("copy_out", list(cat.serving_shards()), a)
            if a.kind == sp.EXPLAIN:
                return self._explain_fanout(a, list(cat.serving_shards()))
            if a.kind in (sp.UPDATE, sp.DELETE):
                if session.proxy.twophase is not None:
                    # No key: every shard that may hold rows runs it, in one transaction.
                    return Fanout("write", list(cat.serving_shards()), a)
                raise r.CrossShardTransaction(
                    f"this statement has no shard key on {', '.join(a.tables)}, and running "
                    "it on every shard needs two-phase commit, which is off "
                    "(two_phase_commit = false)",
                    hint="add the key to the WHERE clause, or turn two_phase_commit on")
            raise r.no_key_error(r.plan(sql), len(cat.shards), a.tables)
        if a.kind == sp.DDL:
            return Fanout("ddl", [sh.name for sh in cat.shards], a)
        rels = user_relations(sql)
        if rels and a.kind in (sp.SELECT, sp.INSERT, sp.UPDATE, sp.DELETE, sp.OTHER):
            raise FeatureNotSupported(
                f"{', '.join(rels)} {'is' if len(rels) == 1 else 'are'} not declared as sharded "
                f"and the cluster has {len(cat.shards)} shards, so pgshard cannot tell where "
                "its rows live (no shard key)",
                hint="declare the table with its shard key ([[tables]] in the config, or PUT "
                     "/api/v1/tables/<name>), or pin the statement: /* shard: <name> */ or "
                     "/* shard_key: <value> */")
        return self.any_shard()

