"""A session's startup: SSL/GSS negotiation, cancel requests, authentication (SCRAM-SHA-256,
md5, trust) and the greeting (ParameterStatus, BackendKeyData). Limits (max_client_conn,
the fd budget, client_login_timeout) are applied from accept by pgshard.proxy.limits."""

from __future__ import annotations

import asyncio
import os
import secrets

from pgshard.protocol import messages as m
from pgshard.protocol.auth import SCRAM, ScramServer, md5_response, scram_verifier
from pgshard.protocol.errors import (
    CannotConnectNow,
    InvalidCatalogName,
    InvalidPassword,
    ProtocolViolation,
)
from pgshard.protocol.framing import CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_3_0, SSL_REQUEST

ADMIN_DATABASE = "pgshard"   # the admin console's database (pgshard.proxy.admin)
_STARTUP_SKIP = frozenset({"user", "database", "replication", "options"})


class Startup:
    """The startup of one ClientSession (held as `session.startup`, run once): SSL
    negotiation, cancel requests, authentication and the greeting (ParameterStatus,
    BackendKeyData, the first ReadyForQuery). What it learns (user, database, pool mode,
    the startup packet's settings) is set on the session."""

    __slots__ = ("session",)

    def __init__(self, session):
        self.session = session

    async def next_startup(self):
        session = self.session
        while True:
            pkt = session.buf.next_startup()
            if pkt is not None:
                return pkt
            await session._wait_data()

    async def next_password(self) -> bytes:
        session = self.session
        while True:
            msg = session.buf.next_message()
            if msg is not None:
                t, body = msg
                if t != 0x70:
                    raise ProtocolViolation(f"expected password response, got message type {chr(t)!r}")
                return body
            await session._wait_data()

    async def run(self) -> bool:
        session = self.session
        proxy = session.proxy
        while True:
            code, body = await self.next_startup()
            if code == SSL_REQUEST:
                if proxy.ssl_context is not None and not session.tls:
                    if len(session.buf):
                        raise ProtocolViolation("received unencrypted data after SSL request")
                    session.transport.write(b"S")
                    loop = asyncio.get_running_loop()
                    session.in_tls_handshake = True   # no plaintext error may be written now
                    try:
                        session.transport = await loop.start_tls(
                            session.transport, session, proxy.ssl_context, server_side=True)
                    finally:
                        session.in_tls_handshake = False
                    session.tls = True
                else:
                    session.transport.write(b"N")
            elif code == GSSENC_REQUEST:
                session.transport.write(b"N")
            elif code == CANCEL_REQUEST:
                pid, key = m.decode_cancel(body)
                await proxy.cancel(pid, key)
                session.transport.close()
                return False
            elif code == PROTOCOL_3_0:
                if session.refusal is not None:
                    # Over a limit at accept (pgshard.proxy.limits): answered now, as
                    # PostgreSQL does, since drivers ignore errors sent before this point.
                    session._send_error(session.refusal)
                    session.transport.close()
                    return False
                params = m.decode_startup_params(body)
                break
            else:
                raise ProtocolViolation(
                    f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server "
                    "supports 3.0", sqlstate="0A000")
        session.user_name = params["user"]
        database = params.get("database") or session.user_name
        if proxy.closing:
            raise CannotConnectNow("the proxy is shutting down", severity="FATAL")
        await self.authenticate()
        if database == ADMIN_DATABASE and database != proxy.config.proxy.database:
            from pgshard.proxy.admin import AdminConsole
            await AdminConsole(session).run(params)   # answered by the proxy itself, no server
            return False
        logical = proxy.config.database(database)   # a [[databases]] entry, or None
        if database != proxy.config.proxy.database and logical is None:
            names = [proxy.config.proxy.database] + [d.name for d in proxy.config.databases]
            served = ", ".join(f'"{n}"' for n in names)
            raise InvalidCatalogName(f'database "{database}" does not exist',
                                     hint=f"pgshard serves the database(s) {served}")
        if proxy.catalog is None or not proxy.catalog.shards:
            raise CannotConnectNow("pgshard has no shards configured", severity="FATAL")
        session.database = database
        session.pool_mode = (session.user.pool_mode if session.user and session.user.pool_mode
                          else logical.pool_mode if logical and logical.pool_mode
                          else proxy.config.proxy.pool_mode)
        session.consistency = session.user.default_consistency if session.user else "strong"
        startup = {k.lower(): v for k, v in params.items() if k not in _STARTUP_SKIP}
        for opt in _parse_options(params.get("options", "")):
            startup[opt[0].lower()] = opt[1]
        session.settings.connected(startup)
        server_params = await proxy.server_params(session.user, database)
        out = [m.auth_ok()]
        merged = dict(server_params)
        for k, v in startup.items():
            for known in merged:
                if known.lower() == k:
                    merged[known] = v
                    break
            else:
                if k == "application_name":
                    merged["application_name"] = v
        if "application_name" in merged and "application_name" not in startup:
            merged["application_name"] = ""
        for k, v in merged.items():
            out.append(m.parameter_status(k, v))
        session.pid, session.secret = proxy.register(session)
        out.append(m.backend_key_data(session.pid, session.secret))
        out.append(m.ready_for_query(b"I"))
        session.write(b"".join(out))
        return True

    async def authenticate(self) -> None:
        session = self.session
        proxy = session.proxy
        user = proxy.config.user(session.user_name)
        session.user = user
        method = user.auth if user else "scram-sha-256"
        if method == "trust":
            return
        if method == "md5":
            salt = os.urandom(4)
            session.transport.write(m.auth_md5(salt))
            body = await self.next_password()
            given = m.decode_password(body).encode()
            stored = user.password
            if stored.startswith("SCRAM-SHA-256$"):
                raise InvalidPassword(f'password authentication failed for user "{session.user_name}"',
                                      detail="the stored secret is a SCRAM verifier; md5 needs the "
                                             "password or its md5 hash")
            expected = md5_response(session.user_name, stored, salt)
            if not secrets.compare_digest(given, expected):
                raise InvalidPassword(f'password authentication failed for user "{session.user_name}"')
            return
        # SCRAM-SHA-256; an unknown user goes through a doomed exchange, as PostgreSQL does,
        # so the reply does not tell which user names exist.
        secret = user.password if user else scram_verifier(secrets.token_hex(16))
        scram = ScramServer(secret, user=session.user_name)
        session.transport.write(m.auth_sasl(scram.mechanisms))
        mech, data = m.decode_sasl_initial(await self.next_password())
        if mech != SCRAM:
            raise ProtocolViolation(f"unsupported SASL mechanism {mech!r}", sqlstate="28000")
        session.transport.write(m.auth_sasl_continue(scram.handle_initial(mech, data)))
        final = scram.handle_final(await self.next_password())
        if user is None:
            raise InvalidPassword(f'password authentication failed for user "{session.user_name}"')
        session.transport.write(m.auth_sasl_final(final))


def _parse_options(options: str) -> list[tuple[str, str]]:
    """-c name=value pairs from the startup 'options' parameter."""
    out = []
    parts = options.replace("--", "-c ").split()
    i = 0
    while i < len(parts):
        p = parts[i]
        if p == "-c" and i + 1 < len(parts):
            p = parts[i + 1]
            i += 1
        elif p.startswith("-c"):
            p = p[2:]
        else:
            i += 1
            continue
        if "=" in p:
            k, v = p.split("=", 1)
            out.append((k.replace("-", "_"), v))
        i += 1
    return out


