"""Our SCRAM verifiers and SCRAM/MD5 client against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import struct
from urllib.parse import urlsplit

import asyncpg
import pytest

from pgshard.protocol.auth import ScramClient, md5_response, scram_verifier
from pgshard.protocol.errors import InvalidPassword

pytestmark = pytest.mark.integration

PASSWORDS = ["s3cret-" + secrets.token_hex(4), "pässwörd", "I\u00adX \u2168"]


@pytest.fixture
async def role(pg_cluster):
    """Make a role with a verifier from scram_verifier(); yields (dsn parts, name, password)."""
    dsn = pg_cluster.shards[0].primary.dsn
    made: list[str] = []
    admin = await asyncpg.connect(dsn)

    async def make(password: str, verifier: str | None = None) -> str:
        name = "auth_" + secrets.token_hex(6)
        verifier = verifier or scram_verifier(password)
        # Utility statements take no parameters; a verifier holds no quote.
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{verifier}'")
        made.append(name)
        stored = await admin.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", name)
        assert stored == verifier  # PostgreSQL took it as a verifier, not as a plaintext
        return name

    try:
        yield urlsplit(dsn), make
    finally:
        for name in made:
            await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def _startup(host: str, port: int, user: str, database: str, password: str,
                   client: ScramClient | None = None) -> str:
    """Authenticate over a raw socket; returns the method PostgreSQL asked for."""
    reader, writer = await asyncio.open_connection(host, port)

    async def read() -> tuple[bytes, bytes]:
        kind, length = struct.unpack("!cI", await reader.readexactly(5))
        return kind, await reader.readexactly(length - 4)

    def send(kind: bytes, body: bytes) -> None:
        writer.write(kind + struct.pack("!I", len(body) + 4) + body)

    try:
        params = f"user\0{user}\0database\0{database}\0\0".encode()
        writer.write(struct.pack("!II", len(params) + 8, 196608) + params)
        method = "trust"
        while True:
            kind, body = await read()
            if kind == b"E":
                fields = {f[:1]: f[1:].decode() for f in body.split(b"\0") if f}
                if fields[b"C"] == "28P01":
                    raise InvalidPassword(fields[b"M"])
                raise AssertionError(f"PostgreSQL error {fields}")
            assert kind == b"R", kind
            (code,) = struct.unpack("!I", body[:4])
            data = body[4:]
            if code == 0:
                return method
            if code == 5:
                method = "md5"
                send(b"p", md5_response(user, password, data) + b"\0")
            elif code == 10:
                method = "scram"
                assert b"SCRAM-SHA-256\0" in data.split(b"\0\0")[0] + b"\0"
                client = client or ScramClient(user, password)
                first = client.initial()
                send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11:
                send(b"p", client.handle_continue(data))
            elif code == 12:
                client.handle_final(data)
            else:
                raise AssertionError(f"unexpected authentication request {code}")
    finally:
        writer.close()


@pytest.mark.parametrize("password", PASSWORDS)
async def test_postgres_accepts_our_verifier(role, password):
    url, make = role
    name = await make(password)
    conn = await asyncpg.connect(host=url.hostname, port=url.port, user=name,
                                 password=password, database=url.path.lstrip("/"))
    try:
        assert await conn.fetchval("SELECT current_user") == name
    finally:
        await conn.close()


@pytest.mark.parametrize("password", PASSWORDS)
async def test_scram_client_against_postgres(role, password):
    url, make = role
    name = await make(password, scram_verifier(password, iterations=1000))
    db = url.path.lstrip("/")
    method = await _startup(url.hostname, url.port, name, db, password)
    if method == "trust":
        pytest.fail("pg_hba.conf trusts 127.0.0.1: the harness must ask for passwords")
    assert method == "scram"
    with pytest.raises(InvalidPassword):
        await _startup(url.hostname, url.port, name, db, password + "x")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=url.hostname, port=url.port, user=name,
                              password=password + "x", database=db)
