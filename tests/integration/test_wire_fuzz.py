"""Wire fuzz: thousands of mutated extended-protocol sequences from raw sockets against a real
proxy over 2 shards, while an asyncpg session runs keyed transactions beside them.

Checks: the proxy never crashes (alive, no traceback / internal error / XX000 of its own in
its log), never hangs (every sequence is answered, or the connection closed, within a
deadline), answers unmutated sequences exactly as PostgreSQL would (the reply types), and
leaves the healthy session's results and committed rows intact.

PGSHARD_FUZZ_SEED reproduces a run (the seed is printed), PGSHARD_FUZZ_SEQUENCES sets its
size (default 5000), PGSHARD_FUZZ_WORKERS the parallel raw connections, PGSHARD_FUZZ_DEADLINE
the seconds a sequence may take. Findings go to the proxy's workdir as fuzz-failures.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import time
from collections import Counter

import asyncpg
import pytest

from pgshard.protocol import messages as m
from pgshard.protocol.auth import ScramClient, md5_response
from tests.fixtures import wirefuzz as wf
from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import USERS, _shards

SEQUENCES = int(os.environ.get("PGSHARD_FUZZ_SEQUENCES", "5000"))
WORKERS = int(os.environ.get("PGSHARD_FUZZ_WORKERS", "4"))
DEADLINE = float(os.environ.get("PGSHARD_FUZZ_DEADLINE", "5"))
BUDGET = float(os.environ.get("PGSHARD_FUZZ_BUDGET", "200"))   # whole run, seconds
MAX_MESSAGE = 1024 * 1024
RAW_USERS = [("trustu", None), ("md5u", "md5-secret")]


@pytest.fixture(scope="module")
def fuzz_proxy(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS fz, ledger_ok; "
                       "CREATE TABLE fz (id bigint PRIMARY KEY, v text); "
                       "CREATE TABLE ledger_ok (id bigint PRIMARY KEY, v text)")
    cfg = {"proxy": {"database": "app", "pool_size": 2 * WORKERS + 2, "query_wait_timeout": 15,
                     "max_client_conn": 200, "max_message_size": MAX_MESSAGE},
           "users": USERS, "shards": _shards(pg_cluster),
           "tables": [{"name": "fz", "shard_key": "id"},
                      {"name": "ledger_ok", "shard_key": "id"}]}
    with ProxyProcess(cfg) as p:
        yield p


class Closed(Exception):
    pass


class RawConn:
    """A driverless client connection: startup, auth (trust, md5), framed reads."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int, user: str, password: str | None,
                   database: str = "app") -> RawConn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                DEADLINE)
        c = cls(reader, writer)
        writer.write(m.startup_message({"user": user, "database": database}))
        end = time.monotonic() + DEADLINE
        scram = None
        while True:
            t, b = await c.read(end)
            if t == b"R":
                (code,) = struct.unpack("!i", b[:4])
                if code == 5:
                    writer.write(m.password_message(md5_response(user, password, b[4:8]) + b"\0"))
                elif code == 10:
                    scram = ScramClient(user, password)
                    writer.write(m.sasl_initial_response(scram.mechanism, scram.initial()))
                elif code == 11:
                    writer.write(m.sasl_response(scram.handle_continue(b[4:])))
                elif code == 12:
                    scram.handle_final(b[4:])
                elif code != 0:
                    raise AssertionError(f"unexpected auth request {code}")
            elif t == b"E":
                raise AssertionError(f"startup failed: {wf.error_fields(b)}")
            elif t == b"Z":
                return c

    async def read(self, end: float) -> tuple[bytes, bytes]:
        try:
            hdr = await asyncio.wait_for(self.r.readexactly(5), max(end - time.monotonic(), 0))
            (n,) = struct.unpack("!i", hdr[1:])
            body = await asyncio.wait_for(self.r.readexactly(n - 4),
                                          max(end - time.monotonic(), 0))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise Closed() from exc
        return hdr[:1], body

    async def send(self, data: bytes) -> None:
        try:
            self.w.write(data)
            await asyncio.wait_for(self.w.drain(), DEADLINE)
        except ConnectionError as exc:
            raise Closed() from exc

    def close(self) -> None:
        self.w.close()


class Fuzz:
    def __init__(self, proxy: ProxyProcess, seed: int):
        self.proxy = proxy
        self.seed = seed
        self.failures: list[dict] = []
        self.stats: Counter = Counter()
        self.sqlstates: Counter = Counter()
        self.done = 0

    def fail(self, kind: str, **info) -> None:
        self.failures.append({"kind": kind, **info})

    async def worker(self, w: int, count: int) -> None:
        rng = random.Random(f"{self.seed}:{w}")
        conn: RawConn | None = None
        history: list[dict] = []     # this connection's sequences, for a finding's context
        last_end: list[dict] = []
        serial = 0

        def names_valid():
            nonlocal serial
            serial += 1
            return f"v{w}_{serial}"

        def names_mutated():
            return rng.choice(["", "m1", "m2", f"v{w}_{serial}"])

        for i in range(count):
            if conn is None:
                user, pw = rng.choice(RAW_USERS)
                try:
                    conn = await RawConn.open(self.proxy.port, user, pw)
                except (AssertionError, TimeoutError, OSError, Closed) as exc:
                    self.fail("connect", worker=w, seq=i, error=repr(exc))
                    await asyncio.sleep(0.2)
                    continue
                self.stats["connections"] += 1
                # How the last connection ended: a departed client's server may be next.
                last_end = history[-1:] if history else []
                history = []
            key = w + WORKERS * rng.randrange(1, 200_000)   # disjoint per worker: no lock waits
            mutate = rng.random() < 0.8
            seq = wf.generate(rng, key, names_mutated if mutate else names_valid, mutate)
            ctx = {"worker": w, "seq": i, "mutations": seq.mutations, "tail": seq.tail,
                   "bytes": seq.data().hex()[:4000], "previous": history[-30:],
                   "previous_connection_end": last_end}
            history.append({"seq": i, "tail": seq.tail, "bytes": seq.data().hex()[:4000]})
            try:
                alive = await self.run(conn, seq, rng, i, ctx)
            except Closed:
                alive = False
            if not alive:
                conn.close()
                conn = None
            self.done += 1
        if conn is not None:
            conn.close()

    async def run(self, conn: RawConn, seq: wf.Sequence, rng: random.Random, i: int,
                  ctx: dict) -> bool:
        """Send one sequence and check its answer; False when the connection is over."""
        data = seq.data()
        view = wf.proxy_view(data, MAX_MESSAGE)
        self.stats["valid" if seq.expect else "mutated"] += 1
        if seq.tail in ("disconnect", "flush_disconnect", "partial"):
            if seq.tail == "flush_disconnect":
                data += wf.FLUSH
            elif seq.tail == "partial":
                data += wf.query("SELECT 1")[:rng.randint(1, 8)]
            await conn.send(data)
            # Let the proxy act on it (attach a server, start the unit), then vanish.
            try:
                await conn.read(time.monotonic() + 0.05)
            except (TimeoutError, Closed):
                pass
            self.stats["disconnects"] += 1
            return False
        if view.end == "incomplete":
            if view.missing > 4096 or rng.random() < 0.3:
                await conn.send(data)
                self.stats["disconnects"] += 1
                return False
            data += b"\0" * view.missing       # complete the message the proxy waits for
            view = wf.proxy_view(data, MAX_MESSAGE)
        if seq.tail == "terminate":
            data += wf.TERMINATE
        # F (a fastpath call) inside an extended-protocol unit closes the connection (08P01)
        may_close = view.end == "fatal" or any(t in b"XpF" for t in view.types) \
            or seq.tail == "terminate"
        token = f"fz-probe-{ctx['worker']}-{i}"
        if view.end != "fatal":
            # The fuzzer's own Sync (the sequence may lack one), then a fresh statement
            # whose answer proves the session goes on.
            data += wf.SYNC + wf.query("ROLLBACK") + wf.query(f"SELECT '{token}'")
        await conn.send(data)
        end = time.monotonic() + DEADLINE
        got: list[str] = []
        errors: list[dict] = []
        seen_token = False
        while True:
            try:
                t, body = await conn.read(end)
            except TimeoutError:
                self.fail("hang", replies="".join(got), errors=errors, **ctx)
                return False
            except Closed:
                if not may_close:
                    self.fail("unexpected close", replies="".join(got), errors=errors, **ctx)
                self.stats["closed"] += 1
                return False
            if t == b"E":
                f = wf.error_fields(body)
                errors.append({k: f.get(k) for k in "SCM"})
                self.sqlstates[f.get("C")] += 1
                if "internal error" in f.get("M", "") or (
                        f.get("S") == "FATAL" and not may_close):
                    self.fail("bad error", error=f, **ctx)
            elif t == b"D" and token.encode() in body:
                seen_token = True
            elif t == b"Z" and seen_token:
                break
            if t[0] not in wf.REPLY_NOISE and not seen_token:
                got.append(t.decode())
        if view.end == "fatal":
            self.fail("answered after a framing error", replies="".join(got), **ctx)
        if seq.expect is not None:
            want = seq.expect + "ZCZ"    # the fuzzer's Sync and ROLLBACK
            if errors and all(e.get("C") == "0A000" for e in errors):
                # A documented refusal (e.g. one pipeline whose statements need two shards,
                # until cross-shard transactions land): an answer, not a misanswer.
                self.stats["refused"] += 1
            elif errors or "".join(got) != want:
                self.fail("valid sequence misanswered", want=want, got="".join(got),
                          errors=errors, **ctx)
        self.stats["answered"] += 1
        return True


class Healthy:
    """A well-behaved asyncpg client: keyed transactions (committed and rolled back) with
    their results checked; the ledger is what must be on the primaries at the end."""

    def __init__(self, dsn: str, seed: int):
        self.dsn = dsn
        self.rng = random.Random(f"{seed}:healthy")
        self.ledger: dict[int, str] = {}
        self.errors: list[str] = []
        self.txns = 0

    async def connect(self):
        conn = await asyncpg.connect(self.dsn, timeout=DEADLINE, command_timeout=2 * DEADLINE)
        sel = await conn.prepare("SELECT v FROM ledger_ok WHERE id = $1", timeout=DEADLINE)
        return conn, sel

    async def run(self, stop: asyncio.Event) -> None:
        conn, sel = await self.connect()
        n = 0
        try:
            while not stop.is_set():
                n += 1
                k = 1_000_000 + n * 7 + self.rng.randrange(7)
                try:
                    await asyncio.wait_for(self.one(conn, sel, k, n), 2 * DEADLINE)
                except Exception as exc:   # every failure is a finding; keep going
                    self.errors.append(f"txn {n} key {k}: {exc!r}")
                    # An unknown state (a timeout mid-transaction): start afresh.
                    conn.terminate()
                    conn, sel = await self.connect()
                self.txns += 1
                await asyncio.sleep(0.005)   # steady, not flooding: the fuzz shares 2 cores
        finally:
            conn.terminate()

    async def one(self, conn, sel, k: int, n: int) -> None:
        v = f"h{n}"
        if self.rng.random() < 0.3:
            tr = conn.transaction()
            await tr.start()
            await conn.execute("INSERT INTO ledger_ok VALUES ($1, $2)", k, v)
            got = await sel.fetchval(k)
            await tr.rollback()
            if got != v:
                self.errors.append(f"key {k}: read {got!r} inside its transaction, wrote {v!r}")
            after = await conn.fetchval("SELECT v FROM ledger_ok WHERE id = $1", k)
            if after is not None:
                self.errors.append(f"key {k}: rolled-back row is visible: {after!r}")
            return
        async with conn.transaction():
            await conn.execute("INSERT INTO ledger_ok VALUES ($1, 'x')", k)
            await conn.execute("UPDATE ledger_ok SET v = $2 WHERE id = $1", k, v)
            got = await sel.fetchval(k)
        if got != v:
            self.errors.append(f"key {k}: read {got!r} inside its transaction, wrote {v!r}")
        self.ledger[k] = v
        old = self.rng.choice(list(self.ledger))
        got = await conn.fetchval(f"SELECT v FROM ledger_ok WHERE id = {old}")
        if got != self.ledger[old]:
            self.errors.append(f"key {old}: read {got!r}, committed {self.ledger[old]!r}")


async def test_wire_fuzz(fuzz_proxy, pg_cluster):
    seed = int(os.environ.get("PGSHARD_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nwire fuzz: seed {seed} (PGSHARD_FUZZ_SEED={seed} to reproduce), "
          f"{SEQUENCES} sequences, {WORKERS} workers")
    fuzz = Fuzz(fuzz_proxy, seed)
    healthy = Healthy(fuzz_proxy.dsn(), seed)
    stop = asyncio.Event()
    t0 = time.monotonic()
    healthy_task = asyncio.create_task(healthy.run(stop))
    per = [SEQUENCES // WORKERS + (w < SEQUENCES % WORKERS) for w in range(WORKERS)]
    try:
        await asyncio.wait_for(asyncio.gather(*(fuzz.worker(w, n) for w, n in enumerate(per))),
                               BUDGET)
    except TimeoutError:
        fuzz.fail("budget", detail=f"only {fuzz.done} of {SEQUENCES} sequences in {BUDGET} s")
    finally:
        stop.set()
        try:
            await asyncio.wait_for(healthy_task, 4 * DEADLINE)
        except Exception as exc:
            healthy.errors.append(f"the healthy session failed: {exc!r}")
    elapsed = time.monotonic() - t0
    print(f"wire fuzz: {fuzz.done} sequences in {elapsed:.1f} s; {dict(fuzz.stats)}; "
          f"healthy transactions {healthy.txns}; SQLSTATEs {dict(fuzz.sqlstates.most_common())}")

    # The ledger: what the healthy session committed is exactly what the primaries hold.
    on_primaries: dict[int, str] = {}
    for s in pg_cluster.shards:
        c = await asyncpg.connect(s.primary.dsn, timeout=DEADLINE)
        try:
            for row in await c.fetch("SELECT id, v FROM ledger_ok"):
                if row["id"] in on_primaries:
                    healthy.errors.append(f"key {row['id']} is on more than one shard")
                on_primaries[row["id"]] = row["v"]
        finally:
            await c.close()
    if on_primaries != healthy.ledger:
        extra = sorted(set(on_primaries) - set(healthy.ledger))[:10]
        missing = sorted(set(healthy.ledger) - set(on_primaries))[:10]
        wrong = [k for k in healthy.ledger if k in on_primaries
                 and on_primaries[k] != healthy.ledger[k]][:10]
        healthy.errors.append(f"ledger differs from the primaries: extra {extra}, "
                              f"missing {missing}, wrong {wrong}")

    # The servers' side, for a finding: what the proxy's connections are doing now.
    activity = {}
    for s in pg_cluster.shards:
        c = await asyncpg.connect(s.primary.dsn, timeout=DEADLINE)
        try:
            rows = await c.fetch(
                "SELECT usename, state, wait_event_type, wait_event, left(query, 120) AS query, "
                "extract(epoch FROM now() - xact_start)::int AS xact_age FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
            activity[s.name] = [dict(r) for r in rows]
        finally:
            await c.close()

    log = fuzz_proxy.log_path.read_text(errors="replace")
    for bad in ("Traceback", "internal error", "XX000"):
        lines = [ln for ln in log.splitlines() if bad in ln]
        if lines:
            fuzz.fail("log", pattern=bad, count=len(lines), first=lines[0][:3000])
    if not fuzz_proxy.alive():
        fuzz.fail("crash", detail="the proxy process exited")

    report = fuzz_proxy.workdir / "fuzz-failures.json"
    report.write_text(json.dumps({"seed": seed, "failures": fuzz.failures,
                                  "healthy": healthy.errors,
                                  "server_activity": activity}, indent=1, default=str))
    kinds = Counter(f["kind"] for f in fuzz.failures)
    summary = (f"seed {seed}: {dict(kinds)} fuzz failures, {len(healthy.errors)} healthy-session "
               f"errors; details in {report}\nfirst: "
               + json.dumps(fuzz.failures[:3], indent=1)[:6000]
               + "\nhealthy: " + "\n".join(healthy.errors[:10]))
    assert healthy.txns >= 20, f"the healthy session ran only {healthy.txns} transactions"
    assert fuzz.done >= SEQUENCES or kinds.get("budget"), summary
    assert not fuzz.failures and not healthy.errors, summary


# ---------------------------------------------------------------- item 9: focused regressions

def _odd_inputs():
    kn = wf.Knobs(random.Random(0))
    sel = "SELECT * FROM fz WHERE id = $1::bigint"
    return {
        "parse OID 2^31+5": wf.parse(kn, "", "SELECT $1", [2**31 + 5]) + wf.SYNC,
        # A lone named Parse may be answered before any server sees it (client.py
        # _local_unit, by design); its first use must then give the server's error.
        "named parse OID 2^32-1": wf.parse(kn, "odd1", "SELECT $1", [2**32 - 1])
        + wf.describe(b"S", "odd1") + wf.SYNC,
        "keyed parse OID 2^31+5": wf.parse(kn, "", "SELECT * FROM fz WHERE id = $1",
                                           [2**31 + 5]) + wf.SYNC,
        "text key not UTF-8 (cast)": wf.parse(kn, "", sel, []) + wf.bind(
            kn, "", "", [b"\xff\xfe"], [0]) + wf.execute() + wf.SYNC,
        "text key not UTF-8 (uncast)": wf.parse(kn, "", "SELECT * FROM fz WHERE id = $1",
                                                [wf.UNSPECIFIED]) + wf.bind(
            kn, "", "", [b"\xff\xfe"], [0]) + wf.execute() + wf.SYNC,
        "text key with NUL": wf.parse(kn, "", sel, []) + wf.bind(
            kn, "", "", [b"1\x002"], [0]) + wf.execute() + wf.SYNC,
        "binary int8 key too short": wf.parse(kn, "", "SELECT * FROM fz WHERE id = $1",
                                              [wf.INT8]) + wf.bind(
            kn, "", "", [b"\0\0\x01"], [1]) + wf.execute() + wf.SYNC,
        "binary int8 key too long": wf.parse(kn, "", "SELECT * FROM fz WHERE id = $1",
                                             [wf.INT8]) + wf.bind(
            kn, "", "", [b"\0" * 9], [1]) + wf.execute() + wf.SYNC,
        "key format code 7": wf.parse(kn, "", sel, []) + wf.bind(
            kn, "", "", [b"1"], [7]) + wf.execute() + wf.SYNC,
        "Query not UTF-8": wf.query(b"SELECT '\xff\xfe'"),
        "Parse without NUL": wf.msg(b"P", b"\xff\xfe") + wf.SYNC,
        "Bind fewer formats than declared": wf.parse(kn, "", sel, []) + wf.msg(
            b"B", b"\0\0" + struct.pack("!hh", 2, 0) + b"\0\x01\0\0\0\x011\0\0") + wf.SYNC,
    }


async def _answer(conn: RawConn) -> tuple[list[dict], bytes]:
    """ErrorResponses until the ReadyForQuery (whose status is returned)."""
    errors = []
    end = time.monotonic() + DEADLINE
    while True:
        t, body = await conn.read(end)
        if t == b"E":
            errors.append(wf.error_fields(body))
        elif t == b"Z":
            return errors, body


async def _select_1_works(conn: RawConn) -> bool:
    await conn.send(wf.query("SELECT 1"))
    end = time.monotonic() + DEADLINE
    seen = False
    while True:
        t, body = await conn.read(end)
        seen = seen or (t == b"D" and body.endswith(b"1"))
        if t == b"Z":
            return seen


@pytest.mark.parametrize("case", list(_odd_inputs()))
async def test_odd_input_answered_like_postgresql(fuzz_proxy, pg_cluster, case):
    data = _odd_inputs()[case]
    log_from = fuzz_proxy.log_path.stat().st_size   # judge only what this test makes
    primary = pg_cluster.shards[0].primary
    pg = await RawConn.open(primary.port, pg_cluster.user, pg_cluster.password,
                            pg_cluster.database)
    proxy = await RawConn.open(fuzz_proxy.port, "trustu", None)
    try:
        await pg.send(data)
        want, want_z = await _answer(pg)
        await proxy.send(data)
        got, got_z = await _answer(proxy)
        assert want and got, (want, got)
        assert [(e["S"], e["C"]) for e in got] == [(e["S"], e["C"]) for e in want], (got, want)
        assert got[0]["S"] == "ERROR" and got_z == want_z
        assert await _select_1_works(proxy), "the session did not go on after the error"
    finally:
        pg.close()
        proxy.close()
    with open(fuzz_proxy.log_path, "rb") as f:
        f.seek(log_from)
        log = f.read().decode(errors="replace")
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
