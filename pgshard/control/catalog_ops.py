"""The manager's catalog service: add, change and remove shards and sharded tables, each
change one compare-and-swap on `catalog` that bumps its version (retried on conflicts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pgshard.config import parse_dsn
from pgshard.control.catalog_sync import CATALOG_KEY, decode_catalog, encode_catalog
from pgshard.control.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from pgshard.ring.catalog import Catalog, Shard
from pgshard.ring.ranges import plan_add
from pgshard.store import CasFailed, MetadataStore

log = logging.getLogger("pgshard.control")

CAS_RETRIES = 10
CONNECT_TIMEOUT = 5.0


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ***."""
    try:
        u = urlsplit(dsn)
        if u.password is None:
            return dsn
        netloc = u.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(u._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return "<unparseable DSN>"


def shard_view(catalog: Catalog, shard: Shard) -> dict:
    """A shard as the API shows it: DSNs without passwords, plus its share of the ring."""
    owned = sum(1 for _, s in catalog.ring.vnodes() if s == shard.name)
    return {"name": shard.name, "primary": redact_dsn(shard.primary),
            "replicas": [redact_dsn(r) for r in shard.replicas], "status": shard.status,
            "weight": shard.weight, "vnodes": owned,
            "ownership": round(catalog.ring.ownership().get(shard.name, 0.0), 6)}


def catalog_view(catalog: Catalog) -> dict:
    data = catalog.to_json()
    data["shards"] = [shard_view(catalog, s) for s in catalog.shards]
    return data


@dataclass
class Change:
    """The outcome of a catalog change, for the response and the audit record."""

    catalog: Catalog
    created: bool = False
    notes: dict = field(default_factory=dict)


class CatalogService:
    def __init__(self, store: MetadataStore, connect_timeout: float = CONNECT_TIMEOUT,
                 databases: Callable[[], tuple[str, ...]] = tuple):
        self.store = store
        self.connect_timeout = connect_timeout
        # The [[databases]] dbnames: their rows count as much as the main database's.
        self.databases = databases

    async def current(self) -> tuple[Catalog, int]:
        kv = await self.store.get(CATALOG_KEY)
        if kv is None:
            raise ServiceUnavailable("the metadata store holds no catalog")
        return decode_catalog(kv.value), kv.revision

    async def update(self, change: Callable[[Catalog], Catalog | None]) -> Catalog:
        """Apply `change` to the current catalog and CAS the result (None: nothing to write)."""
        for _ in range(CAS_RETRIES):
            catalog, revision = await self.current()
            new = change(catalog)
            if new is None:
                return catalog
            try:
                await self.store.put(CATALOG_KEY, encode_catalog(new), expect_revision=revision)
            except CasFailed:
                continue
            log.info("catalog version %d written", new.version)
            return new
        raise Conflict("the catalog kept changing concurrently; retry")

    # ------------------------------------------------------------------ shards

    async def add_shard(self, name: str, primary: str, replicas: list[str]) -> Change:
        """Add a shard after checking its endpoints answer; it gets its vnodes at once only
        when no sharded table holds rows, otherwise it owns nothing until a rebalance."""
        catalog, _ = await self.current()
        if name in catalog.shard_names():
            raise Conflict(f'shard "{name}" already exists')
        _check_unique_endpoints(catalog, name, [primary, *replicas])
        await self.check_endpoints(primary, replicas)
        populated = await self._populated_tables(catalog)
        notes: dict = {}

        def change(cat: Catalog) -> Catalog:
            if name in cat.shard_names():
                raise Conflict(f'shard "{name}" already exists')
            _check_unique_endpoints(cat, name, [primary, *replicas])
            shard = Shard(name=name, primary=primary, replicas=tuple(replicas))
            if populated:
                notes.update(owns_ranges=False, rebalance_required=True,
                             message="sharded tables hold rows ("
                             + ", ".join(populated[:5]) + "): the shard owns no ranges until a "
                             "rebalance job moves them to it")
                return cat.evolve(shards=(*cat.shards, shard))
            ring, moves = plan_add(cat.ring, name, cat.vnodes_per_shard)
            notes.update(owns_ranges=True, rebalance_required=False,
                         message=f"no sharded table holds rows: the shard owns its "
                         f"{cat.vnodes_per_shard} vnodes now ({len(moves)} ranges)")
            return cat.evolve(shards=(*cat.shards, shard), ring=ring)

        return Change(await self.update(change), created=True, notes=notes)

    async def patch_shard(self, name: str, patch: dict) -> Change:
        catalog, _ = await self.current()
        if name not in catalog.shard_names():
            _no_shard(name)
        if "primary" in patch or "replicas" in patch:
            old = catalog.shard(name)
            _check_unique_endpoints(catalog, name, [patch.get("primary", old.primary),
                                                    *patch.get("replicas", old.replicas)])
            await self.check_endpoints(patch.get("primary"), patch.get("replicas", []))

        def change(cat: Catalog) -> Catalog:
            if name not in cat.shard_names():
                _no_shard(name)
            old = cat.shard(name)
            fields = {k: (tuple(v) if k == "replicas" else v) for k, v in patch.items()}
            new = Shard(**{**old.to_json(), "replicas": old.replicas, **fields})
            _check_unique_endpoints(cat, name, [new.primary, *new.replicas])
            if new == old:
                return None
            return cat.evolve(shards=tuple(new if s.name == name else s for s in cat.shards))

        return Change(await self.update(change))

    async def delete_shard(self, name: str) -> Change:
        def change(cat: Catalog) -> Catalog:
            if name not in cat.shard_names():
                _no_shard(name)
            if name in cat.ring.shards():
                n = sum(1 for _, s in cat.ring.vnodes() if s == name)
                raise Conflict(f'shard "{name}" owns {n} vnodes; move its ranges away (merge '
                               "or rebalance) before removing it", vnodes=n)
            return cat.evolve(shards=tuple(s for s in cat.shards if s.name != name),
                              ring=cat.ring.without_shard(name))

        return Change(await self.update(change))

    # ------------------------------------------------------------------ tables

    async def put_table(self, table: str, column: str) -> Change:
        catalog, _ = await self.current()
        await self._check_column_everywhere(catalog, table, column)
        existing = catalog.key_column(table)
        if existing is not None and existing != column:
            populated = await self._populated_tables(catalog, only=[table])
            if populated:
                raise Conflict(f'table "{table}" holds rows sharded by "{existing}"; changing '
                               "its shard key needs a reshard")
        created = existing is None

        def change(cat: Catalog) -> Catalog | None:
            if cat.key_column(table) == column:
                return None
            tables = {t: c for t, c in cat.tables if not _same_table(t, table)}
            tables[table] = column
            return cat.evolve(tables=tuple(tables.items()))

        return Change(await self.update(change), created=created)

    async def delete_table(self, table: str) -> Change:
        def change(cat: Catalog) -> Catalog:
            if cat.key_column(table) is None:
                raise NotFound(f'table "{table}" is not sharded')
            return cat.evolve(tables=tuple((t, c) for t, c in cat.tables
                                           if not _same_table(t, table)))

        return Change(await self.update(change))

    # ------------------------------------------------------------------ checks

    async def check_endpoints(self, primary: str | None, replicas: list[str]) -> None:
        """Connect to each endpoint: the primary must accept writes, replicas must be standbys."""
        checks = [(primary, False)] if primary is not None else []
        checks += [(r, True) for r in replicas]
        problems = await asyncio.gather(*(self._check(dsn, standby) for dsn, standby in checks))
        problems = [p for p in problems if p]
        if problems:
            raise Unprocessable("; ".join(problems))

    async def _check(self, dsn: str, standby: bool) -> str | None:
        what = "replica" if standby else "primary"
        try:
            parse_dsn(dsn)
        except ValueError:
            return f"{what} {redact_dsn(dsn)} is not a valid postgresql:// URL"
        try:
            conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=self.connect_timeout),
                                          self.connect_timeout + 1)
        except Exception as exc:
            return f"{what} {redact_dsn(dsn)} does not answer: {_short(exc)}"
        try:
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
        except Exception as exc:
            return f"{what} {redact_dsn(dsn)}: {_short(exc)}"
        finally:
            await _close(conn)
        if in_recovery != standby:
            return (f"{redact_dsn(dsn)} is a standby, not a primary" if in_recovery
                    else f"{redact_dsn(dsn)} is a primary, not a streaming replica")
        return None

    async def _check_column_everywhere(self, catalog: Catalog, table: str, column: str) -> None:
        """A sharded table must exist, with its key column, on every shard: otherwise keyed
        statements fail on some shards only and fan-out reads half-answer."""
        async def check(shard: Shard) -> str | None:
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(shard.primary, timeout=self.connect_timeout),
                    self.connect_timeout + 1)
            except Exception as exc:
                return f"shard {shard.name} does not answer: {_short(exc)}"
            try:
                rel = await conn.fetchval("SELECT to_regclass($1)::oid", _qualified(table))
                if rel is None:
                    return f'table "{table}" does not exist on shard {shard.name}'
                found = await conn.fetchval(
                    "SELECT true FROM pg_attribute WHERE attrelid = $1 AND attname = $2 "
                    "AND attnum > 0 AND NOT attisdropped", rel, column)
                if not found:
                    return f'table "{table}" has no column "{column}" on shard {shard.name}'
            except asyncpg.PostgresError as exc:
                return f"shard {shard.name}: {_short(exc)}"
            finally:
                await _close(conn)
            return None

        problems = [p for p in await asyncio.gather(*(check(s) for s in catalog.shards)) if p]
        if problems:
            raise Unprocessable("; ".join(problems),
                                hint="create the table on every shard first (DDL through the "
                                     "proxy runs on every shard)")

    async def _populated_tables(self, catalog: Catalog, only: list[str] | None = None
                                ) -> list[str]:
        """Sharded tables holding at least one row on some shard (unknown counts as rows)."""
        tables = only if only is not None else [t for t, _ in catalog.tables]
        if not tables:
            return []
        found: set[str] = set()

        async def scan(shard: Shard, db: str | None) -> None:
            extra = {"database": db} if db is not None else {}
            where = "" if db is None else f" (database {db})"
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(shard.primary, timeout=self.connect_timeout, **extra),
                    self.connect_timeout + 1)
            except asyncpg.InvalidCatalogNameError:
                return   # a [[databases]] entry this shard lacks: no rows there
            except Exception as exc:
                log.warning("cannot tell whether shard %s holds rows: %s", shard.name, exc)
                found.add(f"unknown: shard {shard.name}{where} unreachable")
                return
            try:
                for table in tables:
                    try:
                        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {_qualified(table)})"):
                            found.add(table + where)
                    except asyncpg.UndefinedTableError:
                        pass
                    except asyncpg.PostgresError as exc:
                        found.add(f"{table}{where} (unreadable: {exc})")
            finally:
                await _close(conn)

        await asyncio.gather(*(scan(s, db) for s in catalog.shards
                               for db in (None, *self.databases())))
        return sorted(found)


def _endpoint(dsn: str) -> tuple[str, int, str] | None:
    try:
        d = parse_dsn(dsn)
    except ValueError:
        return None   # check_endpoints reports it
    host = d.host.lower()
    return ("127.0.0.1" if host in ("localhost", "::1", "127.0.0.1") else host, d.port, d.database)


def _check_unique_endpoints(catalog: Catalog, name: str, dsns: list[str]) -> None:
    """One server (host, port, database) serves one shard once: a duplicate would make a
    fan-out read count its rows twice."""
    seen: dict[tuple, str] = {}
    for sh in catalog.shards:
        if sh.name != name:
            for dsn in (sh.primary, *sh.replicas):
                if (e := _endpoint(dsn)) is not None:
                    seen[e] = sh.name
    mine: set[tuple] = set()
    for dsn in dsns:
        e = _endpoint(dsn)
        if e is None:
            continue
        if e in seen:
            raise Conflict(f"{redact_dsn(dsn)} is already a server of shard {seen[e]}")
        if e in mine:
            raise Conflict(f"{redact_dsn(dsn)} is listed twice for shard {name}")
        mine.add(e)


def _no_shard(name: str):
    raise NotFound(f'shard "{name}" does not exist')


def _same_table(a: str, b: str) -> bool:
    def norm(t: str) -> str:
        t = t.lower()
        return t[len("public."):] if t.startswith("public.") else t
    return norm(a) == norm(b)


def _qualified(table: str) -> str:
    # Catalog table names are case-insensitive, like unquoted SQL identifiers.
    return ".".join('"' + part.lower().replace('"', '""') + '"' for part in table.split("."))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


async def _close(conn) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()
