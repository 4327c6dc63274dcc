"""The admin console: `psql -d pgshard` as one of [proxy] admin_users gets a session that the
proxy answers itself (no server): SHOW POOLS|CLIENTS|SERVERS|STATS|SHARDS|CONFIG|VERSION|HELP,
RELOAD, PAUSE [db|shard], RESUME [db|shard], KILL <client pid>; simple and extended protocol,
text results; anything else is a clear error."""

from __future__ import annotations

import asyncio
import logging
import re

from pgshard.protocol import messages as m
from pgshard.protocol.errors import (
    AdminShutdown,
    ConfigFileError,
    FeatureNotSupported,
    InvalidAuthorization,
    InvalidCursorName,
    InvalidSqlStatementName,
    ObjectNotInPrerequisiteState,
    PgError,
)
from pgshard.protocol.framing import FRONTEND_TYPES
from pgshard.proxy import admin_views as views
from pgshard.proxy.drain import close_client
from pgshard.proxy.pause import PauseGate

log = logging.getLogger("pgshard.admin")

ADMIN_DATABASE = "pgshard"
PAUSE_WAIT = 10.0     # seconds PAUSE waits for servers in use to be released
HELP = ("SHOW POOLS|CLIENTS|SERVERS|STATS|SHARDS|CONFIG|VERSION|HELP; RELOAD; "
        "PAUSE [db|shard]; RESUME [db|shard]; KILL <client pid>")
# Statements drivers send on their own, accepted and ignored (no transactions here).
_NOOPS = {"begin": "BEGIN", "start": "BEGIN", "commit": "COMMIT", "end": "COMMIT",
          "rollback": "ROLLBACK", "abort": "ROLLBACK", "set": "SET", "reset": "RESET",
          "discard": "DISCARD ALL"}


class AdminError(PgError, code="42601"):
    """Not an admin console command, or a bad argument."""


class Result:
    """What a command produced: a table (SHOW), or only a command tag."""

    __slots__ = ("tag", "table", "notice")

    def __init__(self, tag: str, table: views.Table | None = None, notice: str | None = None):
        self.tag, self.table, self.notice = tag, table, notice


def _text(v) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return b"t" if v else b"f"
    if isinstance(v, float):
        return repr(v).encode()
    return str(v).encode()


def _words(sql: str) -> list[str]:
    sql = re.sub(r"/\*.*?\*/|--[^\n]*", " ", sql, flags=re.S)
    return sql.strip().rstrip(";").split()


class AdminConsole:
    """One admin session; takes over the ClientSession after authentication."""

    def __init__(self, session):
        self.session = session
        self.proxy = session.proxy
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.skip_to_sync = False

    # ------------------------------------------------------------ the session

    async def run(self, params: dict[str, str]) -> None:
        s, proxy = self.session, self.proxy
        if s.user_name not in proxy.config.proxy.admin_users:
            raise InvalidAuthorization(
                f'user "{s.user_name}" may not use the admin console', severity="FATAL",
                hint=f'[proxy] admin_users lists who may connect to database "{ADMIN_DATABASE}"')
        s.admin = self
        s.settings.startup = {"application_name": params.get("application_name", "")}
        s.pid, s.secret = proxy.register(s)
        out = [m.auth_ok()]
        for k, v in (("server_version", "15.0 (pgshard admin console)"),
                     ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                     ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"),
                     ("standard_conforming_strings", "on"), ("TimeZone", "UTC"),
                     ("application_name", params.get("application_name", ""))):
            out.append(m.parameter_status(k, v))
        out += [m.backend_key_data(s.pid, s.secret), m.ready_for_query(b"I")]
        s.write(b"".join(out))
        s.buf.allowed = FRONTEND_TYPES - {0x46}   # no fastpath calls: nothing to call
        log.info("admin console: %s connected from %s", s.user_name, s.peer)
        while True:
            msg = s.buf.next_message()
            if msg is None:
                await s._wait_data()
                continue
            t, body = msg
            if t == 0x58:        # Terminate
                return
            await self._message(t, body)

    async def _message(self, t: int, body: bytes) -> None:
        s = self.session
        if t == 0x53:            # Sync
            self.skip_to_sync = False
            s.write(m.ready_for_query(b"I"))
            return
        if t == 0x48:            # Flush
            return
        if self.skip_to_sync:
            return
        try:
            if t == 0x51:        # Query
                await self._simple(m.decode_query(body))
            elif t == 0x50:      # Parse
                p = m.decode_parse(body)
                self.statements[p.name] = p.sql
                s.write(m.PARSE_COMPLETE)
            elif t == 0x42:      # Bind
                b = m.decode_bind(body)
                if any(f == 1 for f in b.result_formats):
                    raise FeatureNotSupported("the admin console answers in text format only")
                if b.statement not in self.statements:
                    raise InvalidSqlStatementName(
                        f'prepared statement "{b.statement}" does not exist')
                self.portals[b.portal] = self.statements[b.statement]
                s.write(m.BIND_COMPLETE)
            elif t == 0x44:      # Describe
                kind, name = m.decode_describe(body)
                sql = (self.statements if kind == b"S" else self.portals).get(name)
                if sql is None:
                    what = "prepared statement" if kind == b"S" else "portal"
                    raise InvalidSqlStatementName(f'{what} "{name}" does not exist')
                if kind == b"S":
                    s.write(m.parameter_description(()))
                table = self._describe(sql)
                s.write(m.row_description(table.columns) if table is not None else m.NO_DATA)
            elif t == 0x45:      # Execute
                name = m.decode_cstr(body[:body.index(b"\0") + 1])
                sql = self.portals.get(name)
                if sql is None:
                    raise InvalidCursorName(f'portal "{name}" does not exist')
                await self._execute(sql, describe=False)
            elif t == 0x43:      # Close
                kind, name = m.decode_close(body)
                (self.statements if kind == b"S" else self.portals).pop(name, None)
                s.write(m.CLOSE_COMPLETE)
            else:
                raise FeatureNotSupported(f"message type {chr(t)!r} is not supported by the "
                                          "admin console")
        except PgError as exc:
            if exc.fatal:
                raise
            s.write(m.error_from(exc))
            self.skip_to_sync = True

    async def _simple(self, sql: str) -> None:
        s = self.session
        parts = [p for p in sql.split(";") if p.strip()]
        if not parts:
            s.write(m.EMPTY_QUERY + m.ready_for_query(b"I"))
            return
        try:
            for part in parts:
                await self._execute(part, describe=True)
        except PgError as exc:
            if exc.fatal:
                raise
            s.write(m.error_from(exc))
        s.write(m.ready_for_query(b"I"))

    async def _execute(self, sql: str, describe: bool) -> None:
        res = await self.command(sql)
        out = []
        if res.notice:
            out.append(m.error_response("00000", res.notice, severity="NOTICE", notice=True))
        if res.table is not None:
            if describe:
                out.append(m.row_description(res.table.columns))
            out += [m.data_row([_text(v) for v in row]) for row in res.table.rows]
            out.append(m.command_complete(f"SHOW {len(res.table.rows)}"
                                          if res.tag == "SHOW" else res.tag))
        else:
            out.append(m.command_complete(res.tag))
        self.session.write(b"".join(out))

    def _describe(self, sql: str) -> views.Table | None:
        """The columns a statement will return (a SHOW), without running any action."""
        w = [x.lower() for x in _words(sql)]
        if len(w) == 2 and w[0] == "show" and w[1] in views.VIEWS:
            return views.Table(views.VIEWS[w[1]](self.proxy).columns, [])
        if w[:2] in (["show", "version"], ["show", "help"]):
            return views.Table([(w[1], views.TEXT)], [])
        return None

    # ------------------------------------------------------------ commands

    async def command(self, sql: str) -> Result:
        words = _words(sql)
        if not words:
            return Result("")
        verb = words[0].lower()
        args = words[1:]
        if verb == "show" and len(args) == 1:
            what = args[0].lower()
            if what in views.VIEWS:
                return Result("SHOW", views.VIEWS[what](self.proxy))
            if what == "version":
                from pgshard import __version__
                return Result("SHOW", views.Table([("version", views.TEXT)],
                                                  [[f"pgshard {__version__}"]]))
            if what == "help":
                return Result("SHOW", views.Table([("help", views.TEXT)],
                                                  [[c.strip()] for c in HELP.split(";")]))
        if verb in _NOOPS:
            return Result(_NOOPS[verb])
        if verb == "reload" and not args:
            return self._reload()
        if verb in ("pause", "resume") and len(args) <= 1:
            return await self._pause(verb, args[0] if args else None)
        if verb == "kill" and len(args) == 1:
            return self._kill(args[0])
        raise AdminError(f"not an admin console command: {sql.strip()[:200]}",
                         hint=f"the console knows {HELP}")

    def _reload(self) -> Result:
        if self.proxy.reload is None:
            raise ObjectNotInPrerequisiteState(
                "this process was not started from a config file: nothing to reload")
        try:
            applied, restart = self.proxy.reload()
        except Exception as exc:   # a bad file: reported, nothing applied
            raise ConfigFileError(f"config not reloaded: {exc}") from None
        note = "; ".join(applied) or "nothing changed"
        if restart:
            note += " (after a restart: " + "; ".join(restart) + ")"
        return Result("RELOAD", notice=note)

    def _target(self, name: str | None) -> tuple[str, str] | None:
        """None (everything) for no name, or the logical database when it is the only one;
        ("database", name) for one of several; ("shard", name)."""
        if name is None:
            return None
        name = name.strip('"')
        cfg = self.proxy.config
        names = [cfg.proxy.database, *(d.name for d in cfg.databases)]
        if name in names:
            return None if len(names) == 1 else ("database", name)
        cat = self.proxy.catalog
        if cat is None or name not in cat.shard_names():
            raise AdminError(f'no database or shard "{name}"',
                             hint=f"the databases are {', '.join(names)}; SHOW SHARDS lists "
                                  "the shards")
        return ("shard", name)

    async def _pause(self, verb: str, name: str | None) -> Result:
        target = self._target(name)
        gate = PauseGate.of(self.proxy)
        if verb == "resume":
            gate.resume(target)
            log.info("admin console: %s resumed %s", self.session.user_name,
                     " ".join(target) if target else "all")
            return Result("RESUME")
        gate.pause(target)
        log.info("admin console: %s paused %s", self.session.user_name,
                 " ".join(target) if target else "all")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PAUSE_WAIT
        while gate.busy(target) and loop.time() < deadline and not self.session.closed:
            await asyncio.sleep(0.05)
        busy = gate.busy(target)
        return Result("PAUSE", notice=f"{busy} server(s) still in use: their transactions may "
                                      "finish" if busy else None)

    def _kill(self, arg: str) -> Result:
        if not arg.isdigit():
            raise AdminError(f"KILL takes a client pid (SHOW CLIENTS), not {arg!r}")
        client = self.proxy.clients.get(int(arg))
        if client is None:
            raise AdminError(f"no client with pid {arg}", sqlstate="42704")
        close_client(client, AdminShutdown("terminating connection due to administrator command "
                                           "(KILL from the admin console)", severity="FATAL"))
        log.info("admin console: %s killed client %s (%s)", self.session.user_name, arg,
                 client.peer)
        return Result("KILL")
