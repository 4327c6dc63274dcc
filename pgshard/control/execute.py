"""`POST /v1/execute`: a statement over REST through the same routing and pools as the wire
protocol, by connecting to the proxy's own listener as an internal user."""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import ipaddress
import json
import logging
import math
import uuid

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from pgshard.control.errors import (
    ApiError,
    BadRequest,
    Conflict,
    GatewayTimeout,
    ServiceUnavailable,
)
from pgshard.ring import hashing

log = logging.getLogger("pgshard.control")

INTERNAL_USER = "pgshard_internal"


class QueryExecutor:
    """A small pool of asyncpg connections to the proxy; one statement per request."""

    def __init__(self, proxy, password: str, *, pool_size: int = 4, timeout: float = 30.0,
                 max_rows: int = 10000):
        self.proxy = proxy
        self.password = password
        self.timeout = timeout
        self.max_rows = max_rows
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[asyncpg.Connection] = []
        # What each pooled connection last SET, to skip repeating it.
        self._session: dict[asyncpg.Connection, tuple[str | None, str]] = {}
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._session.clear()
        for conn in idle:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    async def execute(self, query: str, params: list, shard_key, consistency: str) -> dict:
        """Run one statement; the result as JSON-ready rows, or an ApiError."""
        if self._closed:
            raise ServiceUnavailable("the sidecar is shutting down")
        key = None if shard_key is None else str(shard_key)
        if "\x00" in query or (key is not None and "\x00" in key):
            raise BadRequest("query and shard_key must not contain NUL characters")
        async with self._slots:
            conn = await self._acquire()
            healthy = False
            try:
                result = await self._run(conn, query, params, key, consistency)
                healthy = True
                return result
            except ApiError:
                healthy = True
                raise
            except asyncpg.PostgresError as exc:
                healthy = not isinstance(exc, asyncpg.PostgresConnectionError)
                raise _pg_problem(exc) from None
            except asyncpg_base.InterfaceError as exc:
                if conn.is_closed():
                    raise ServiceUnavailable(f"the proxy connection failed: {exc}") from None
                healthy = True
                raise BadRequest(f"cannot run the statement: {exc}") from None
            except TimeoutError:
                raise GatewayTimeout(f"the statement did not finish within {self.timeout:g} s "
                                     "and was cancelled") from None
            except OSError as exc:
                raise ServiceUnavailable(f"the proxy connection failed: {exc}") from None
            finally:
                self._release(conn, healthy)

    async def _run(self, conn, query: str, params: list, key: str | None,
                   consistency: str) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._session.get(conn) != (key, consistency):
            self._session.pop(conn, None)
            if key is None:
                await conn.execute("RESET pgshard.shard_key", timeout=self.timeout)
            else:
                await conn.execute("SET pgshard.shard_key = " + _literal(key),
                                   timeout=self.timeout)
            await conn.execute(f"SET pgshard.consistency = '{consistency}'", timeout=self.timeout)
            self._session[conn] = (key, consistency)
        stmt = await conn.prepare(query, timeout=max(0.1, deadline - loop.time()))
        args = [_coerce(v, t, i + 1) for i, (v, t) in enumerate(
            zip(params, stmt.get_parameters(), strict=False))]
        if len(params) != len(stmt.get_parameters()):
            raise BadRequest(f"the statement takes {len(stmt.get_parameters())} parameter(s), "
                             f"{len(params)} given")
        rows = await stmt.fetch(*args, timeout=max(0.1, deadline - loop.time()))
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK", timeout=self.timeout)
            raise Conflict("/v1/execute runs single statements; the transaction it opened "
                           "was rolled back")
        columns = [{"name": a.name, "type": a.type.name} for a in stmt.get_attributes()]
        truncated = len(rows) > self.max_rows
        names = [c["name"] for c in columns]
        out = {
            "columns": columns,
            "rows": [dict(zip(names, (to_json_value(v) for v in r), strict=False))
                     for r in rows[:self.max_rows]],
            "row_count": len(rows),
            "command": stmt.get_statusmsg(),
            "truncated": truncated,
        }
        catalog = self.proxy.catalog
        if key is not None and catalog is not None:
            out["shard"] = catalog.ring.owner(hashing.token(key.encode()))
        return out

    async def _acquire(self) -> asyncpg.Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._session.pop(conn, None)
        cfg = self.proxy.config.proxy
        try:
            return await asyncpg.connect(
                host="127.0.0.1", port=self.proxy.port, user=INTERNAL_USER,
                password=self.password, database=cfg.database, timeout=self.timeout,
                ssl=False, server_settings={"application_name": "pgshard-execute"})
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ServiceUnavailable(f"cannot reach the proxy: {exc}") from None

    def _release(self, conn: asyncpg.Connection, healthy: bool) -> None:
        if healthy and not self._closed and not conn.is_closed() \
                and not conn.is_in_transaction():
            self._idle.append(conn)
        else:
            self._session.pop(conn, None)
            conn.terminate()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# SQLSTATE class → HTTP status; anything else is the client's statement at fault (400).
_STATUS_BY_CLASS = {"08": 503, "53": 503, "57": 503, "40": 409, "23": 409, "55": 409}


def _pg_problem(exc: asyncpg.PostgresError) -> ApiError:
    sqlstate = getattr(exc, "sqlstate", None) or "XX000"
    if sqlstate == "57014":
        err: ApiError = GatewayTimeout(exc.message if hasattr(exc, "message") else str(exc))
    else:
        status = _STATUS_BY_CLASS.get(sqlstate[:2], 400)
        cls = {503: ServiceUnavailable, 409: Conflict}.get(status, BadRequest)
        err = cls(getattr(exc, "message", None) or str(exc))
    err.extra["sqlstate"] = sqlstate
    for attr in ("hint", "detail"):
        value = getattr(exc, attr, None)
        if value:
            err.extra["pg_" + attr] = value
    return err


_INT_TYPES = {"int2", "int4", "int8", "oid"}
_FLOAT_TYPES = {"float4", "float8"}


def _coerce(value, typ, n: int):
    """A JSON value as the Python object asyncpg encodes for parameter type `typ`."""
    if value is None:
        return None
    name = typ.name
    try:
        if typ.kind == "array" and isinstance(value, list):
            elem = getattr(typ, "element_type", None)
            return [_coerce(v, elem, n) if elem is not None else v for v in value]
        if name in _INT_TYPES:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("not an integer")
            return int(value)
        if name in _FLOAT_TYPES:
            return float(value)
        if name == "numeric":
            return decimal.Decimal(str(value))
        if name == "bool":
            if isinstance(value, str):
                return {"true": True, "t": True, "false": False, "f": False}[value.lower()]
            return bool(value)
        if name in ("text", "varchar", "bpchar", "name", "unknown", "citext"):
            return value if isinstance(value, str) else json.dumps(value)
        if name in ("json", "jsonb"):
            return value if isinstance(value, str) else json.dumps(value)
        if name == "uuid":
            return uuid.UUID(str(value))
        if name == "date":
            return datetime.date.fromisoformat(value)
        if name in ("timestamp", "timestamptz"):
            ts = datetime.datetime.fromisoformat(value)
            if name == "timestamptz" and ts.tzinfo is None:
                ts = ts.replace(tzinfo=datetime.UTC)
            return ts
        if name == "time":
            return datetime.time.fromisoformat(value)
        if name == "bytea":
            if isinstance(value, str) and value.startswith("\\x"):
                return bytes.fromhex(value[2:])
            return base64.b64decode(value, validate=True)
    except (ValueError, TypeError, KeyError, decimal.InvalidOperation, AttributeError,
            OverflowError) as exc:
        raise BadRequest(f"parameter ${n}: {value!r} is not a valid {name} ({exc})") from None
    return value


def to_json_value(v):
    """A value asyncpg decoded, as JSON: exact numerics as strings, times in ISO 8601."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime | datetime.date | datetime.time):
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    if isinstance(v, uuid.UUID | ipaddress._BaseAddress | ipaddress._BaseNetwork):
        return str(v)
    if isinstance(v, list | tuple):
        return [to_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): to_json_value(x) for k, x in v.items()}
    if isinstance(v, asyncpg.Record):
        return [to_json_value(x) for x in v.values()]
    return str(v)
