"""SCRAM-SHA-256 and MD5 authentication: RFC vectors, both sides talking, malformed input."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pgshard.protocol import auth
from pgshard.protocol.auth import (
    SCRAM,
    ScramClient,
    ScramSecret,
    ScramServer,
    md5_password_hash,
    md5_response,
    parse_scram_verifier,
    scram_verifier,
)
from pgshard.protocol.errors import InvalidPassword, ProtocolViolation

# RFC 7677, section 3.
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_NONCE = RFC_CLIENT_NONCE + RFC_SERVER_NONCE
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_VERIFIER = scram_verifier("pencil", salt=RFC_SALT, iterations=4096)


def rfc_server(**kw) -> ScramServer:
    return ScramServer(RFC_VERIFIER, user="user", nonce=RFC_SERVER_NONCE, **kw)


def started_server(client_first: bytes = b"n,,n=,r=abc") -> tuple[ScramServer, str]:
    server = ScramServer("pencil", user="user", nonce="xyz")
    server.handle_initial(SCRAM, client_first)
    return server, client_first.split(b"r=", 1)[1].decode() + "xyz"


# -- RFC 7677 vector -------------------------------------------------------------------------

def test_rfc7677_client():
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE, send_user=True)
    assert client.mechanism == SCRAM
    assert client.initial() == RFC_CLIENT_FIRST
    assert client.handle_continue(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.handle_final(RFC_SERVER_FINAL)


def test_rfc7677_server():
    server = rfc_server()
    assert server.mechanisms == [SCRAM]
    assert server.handle_initial(SCRAM, RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL


def test_rfc7677_server_from_plaintext_uses_own_salt():
    server = ScramServer("pencil", nonce=RFC_SERVER_NONCE)
    first = server.handle_initial(SCRAM, RFC_CLIENT_FIRST).decode()
    assert first.startswith(f"r={RFC_NONCE},s=") and first.endswith(",i=4096")
    assert "W22ZaJ0SNY7soEsUEjb6gQ==" not in first


def test_default_client_first_has_empty_user():
    first = ScramClient("alice", "pw").initial()
    assert first.startswith(b"n,,n=,r=")
    assert len(first) > len(b"n,,n=,r=") + 20


# -- client and server together --------------------------------------------------------------

@pytest.mark.parametrize("secret,password,ok", [
    ("s3cret", "s3cret", True),
    ("s3cret", "wrong", False),
    (scram_verifier("s3cret"), "s3cret", True),
    (scram_verifier("s3cret"), "S3cret", False),
    (scram_verifier("s3cret", iterations=1), "s3cret", True),
    (scram_verifier(""), "", True),
    ("pässwörd", "pässwörd", True),
    # SASLprep: U+00AD maps to nothing, NBSP to space, NFKC folds U+2168 to "IX".
    (scram_verifier("I\u00adX a"), "IX\u00a0a", True),
    ("\u2168", "IX", True),
])
def test_client_against_server(secret, password, ok):
    client = ScramClient("alice", password)
    server = ScramServer(secret, user="alice")
    server_first = server.handle_initial(client.mechanism, client.initial())
    client_final = client.handle_continue(server_first)
    if not ok:
        with pytest.raises(InvalidPassword) as e:
            server.handle_final(client_final)
        assert e.value.message == 'password authentication failed for user "alice"'
        assert e.value.sqlstate == "28P01" and e.value.fatal
        return
    client.handle_final(server.handle_final(client_final))


def test_y_binding_flag_accepted():
    client_first = b"y,,n=,r=abc"
    server, nonce = started_server(client_first)
    client = ScramClient("u", "pencil", nonce="abc")
    client.initial()
    final = client.handle_continue(server._server_first.encode())
    assert final.startswith(b"c=biws,")
    # A 'y' client must echo its own header, eSws == base64("y,,").
    with pytest.raises(ProtocolViolation):
        server.handle_final(final)
    server, nonce = started_server(client_first)
    client = ScramClient("u", "pencil", nonce="abc")
    client.initial()
    final = client.handle_continue(server._server_first.encode()).replace(b"c=biws", b"c=eSws")
    # The proof covers the c= attribute, so this one is a wrong proof, not a malformed message.
    with pytest.raises(InvalidPassword):
        server.handle_final(final)


def test_wrong_password_without_user_name():
    client = ScramClient("u", "nope")
    server = ScramServer("pencil")
    final = client.handle_continue(server.handle_initial(SCRAM, client.initial()))
    with pytest.raises(InvalidPassword, match="^password authentication failed$"):
        server.handle_final(final)


def test_client_rejects_forged_server_signature():
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE, send_user=True)
    client.initial()
    client.handle_continue(RFC_SERVER_FIRST)
    with pytest.raises(InvalidPassword, match="signature"):
        client.handle_final(b"v=" + base64.b64encode(bytes(32)))


@pytest.mark.parametrize("final,exc", [
    (b"e=invalid-proof", InvalidPassword),
    (b"e=unknown-user", InvalidPassword),
    (b"e=other-error", ProtocolViolation),
    (b"", ProtocolViolation),
    (b"x=abc", ProtocolViolation),
    (b"v=***", ProtocolViolation),
])
def test_client_final_errors(final, exc):
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE, send_user=True)
    client.initial()
    client.handle_continue(RFC_SERVER_FIRST)
    with pytest.raises(exc):
        client.handle_final(final)


# -- malformed input -------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism,data", [
    ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
    ("SCRAM-SHA-1", b"n,,n=,r=abc"),
    (SCRAM, b""),
    (SCRAM, b"p=tls-server-end-point,,n=,r=abc"),
    (SCRAM, b"x,,n=,r=abc"),
    (SCRAM, b"n"),
    (SCRAM, b"n,"),
    (SCRAM, b"n,a=admin,n=,r=abc"),
    (SCRAM, b"n,,m=ext,n=,r=abc"),
    (SCRAM, b"n,,r=abc"),
    (SCRAM, b"n,,n="),
    (SCRAM, b"n,,n=,r="),
    (SCRAM, b"n,,n=,x=abc"),
    (SCRAM, b"n,,n=,r=a b"),
    (SCRAM, b"n,,n=,r=abc,junk"),
])
def test_server_rejects_malformed_client_first(mechanism, data):
    with pytest.raises(ProtocolViolation) as e:
        ScramServer("pencil").handle_initial(mechanism, data)
    assert e.value.sqlstate == "08P01"


def test_server_ignores_user_name_and_extensions():
    server = ScramServer("pencil", nonce="S")
    assert server.handle_initial(SCRAM, b"n,,n=someone=2Celse,r=abc,x=ext").startswith(
        b"r=abcS,s=")


def good_client_final(nonce: str, proof: bytes = bytes(32)) -> bytes:
    return f"c=biws,r={nonce},p={base64.b64encode(proof).decode()}".encode()


@pytest.mark.parametrize("make", [
    lambda n: b"",
    lambda n: b"c=biws",
    lambda n: f"c=biws,r={n}".encode(),
    lambda n: f"r={n},c=biws,p=AAAA".encode(),
    lambda n: good_client_final(n).replace(b"c=biws", b"c=***"),
    lambda n: good_client_final(n).replace(b"c=biws", b"c=eSws"),  # sent 'n,,', claims 'y,,'
    lambda n: good_client_final(n).replace(b"c=biws", b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCwsAAAA"),
    lambda n: good_client_final(n + "x"),
    lambda n: good_client_final("abc"),
    lambda n: good_client_final(n, proof=bytes(31)),
    lambda n: good_client_final(n)[:-3] + b"!!=",
    lambda n: good_client_final(n).replace(b",p=", b",q="),
    lambda n: good_client_final(n).replace(b",p=", b",junk,p="),
    lambda n: b"\xff\xfe",
])
def test_server_rejects_malformed_client_final(make):
    server, nonce = started_server()
    with pytest.raises(ProtocolViolation):
        server.handle_final(make(nonce))


def test_server_out_of_order():
    with pytest.raises(ProtocolViolation):
        ScramServer("pencil").handle_final(good_client_final("abc"))
    server, nonce = started_server()
    with pytest.raises(ProtocolViolation):
        server.handle_initial(SCRAM, b"n,,n=,r=abc")
    with pytest.raises(InvalidPassword):
        server.handle_final(good_client_final(nonce))
    with pytest.raises(ProtocolViolation):  # no second attempt on the same exchange
        server.handle_final(good_client_final(nonce))


@pytest.mark.parametrize("server_first", [
    b"",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==",
    b"m=ext,r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    b"r=" + RFC_CLIENT_NONCE.encode() + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=***,i=4096",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=,i=4096",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=abc",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
    b"r=" + RFC_CLIENT_NONCE.encode() + b"X,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,junk",
])
def test_client_rejects_malformed_server_first(server_first):
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE)
    client.initial()
    with pytest.raises(ProtocolViolation):
        client.handle_continue(server_first)


def test_client_out_of_order():
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE, send_user=True)
    with pytest.raises(ProtocolViolation):
        client.handle_continue(RFC_SERVER_FIRST)
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE, send_user=True)
    client.initial()
    with pytest.raises(ProtocolViolation):
        client.handle_final(RFC_SERVER_FINAL)
    with pytest.raises(ProtocolViolation):
        client.initial()


def test_send_user_escapes_saslname():
    assert ScramClient("a,b=c", "pw", nonce="N", send_user=True).initial() == b"n,,n=a=2Cb=3Dc,r=N"


# -- verifiers -------------------------------------------------------------------------------

def test_verifier_rfc_salt():
    assert RFC_VERIFIER.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    secret = parse_scram_verifier(RFC_VERIFIER)
    assert secret == ScramSecret(4096, RFC_SALT, secret.stored_key, secret.server_key)
    assert str(secret) == RFC_VERIFIER
    assert len(secret.stored_key) == len(secret.server_key) == 32


def test_verifier_random_salt_round_trip():
    a, b = scram_verifier("pw"), scram_verifier("pw")
    assert a != b  # fresh salt each time
    for v in (a, b, scram_verifier("pw", iterations=10000)):
        secret = parse_scram_verifier(v)
        assert len(secret.salt) == 16
        assert str(secret) == v
        assert scram_verifier("pw", salt=secret.salt, iterations=secret.iterations) == v


# Verifiers PostgreSQL 15 stored for CREATE ROLE ... PASSWORD '<password>' (SASLprep included).
@pytest.mark.parametrize("password,stored", [
    ("postgres", "SCRAM-SHA-256$4096:AfNskd+Gu3QEnh60JN/vvw==$"
                 "IY/yqgL0QL0FE/qjyjfbGwZaiBIMsGWQVyZb4/hOfNk=:"
                 "G8pFzQuQ8MyMD2oH5+33Ug/jCPOvsJtSBTeKycNPaWQ="),
    ("pässwörd", "SCRAM-SHA-256$4096:p8cesa0p5ooKuI5LAU37Qw==$"
                 "HRJzSOJ3dfy5jMxN8SN7QJDjxCqiye6q5rVIARroihU=:"
                 "i+wxPEyWji/HZObksahF6gnhbOAmXZVl7Y87+/ZeFvY="),
    ("I\u00adX \u2168", "SCRAM-SHA-256$4096:XdHxZFYG0GWY4lQ/Gjm9Mw==$"
                        "Y3Obj14hfsAD8JOz8ng5EjL3ocRfrdXYwLsWr+h0owQ=:"
                        "ijyItKgkLw9CC4Yinqo7b3/KBnNYzmh0u5o7wrl7rf8="),
])
def test_verifier_matches_postgres(password, stored):
    secret = parse_scram_verifier(stored)
    assert scram_verifier(password, salt=secret.salt, iterations=secret.iterations) == stored


@pytest.mark.parametrize("junk", [
    "",
    "pencil",
    "md53175bce1d3201d16594cebf9d7eb3f9d",
    "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 44 + ":" + "A" * 44,
    "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:***$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$AAAA:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "é" * 44,
])
def test_parse_verifier_rejects_junk(junk):
    with pytest.raises(ValueError):
        parse_scram_verifier(junk)


def test_server_refuses_md5_secret():
    with pytest.raises(ValueError):
        ScramServer(md5_password_hash("u", "p"))


def test_plaintext_derivation_is_cached():
    auth._derived_secret.cache_clear()
    ScramServer("cached-pw")
    ScramServer("cached-pw")
    info = auth._derived_secret.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_salted_password_is_cached():
    auth._salted_password.cache_clear()
    for _ in range(3):
        client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE, send_user=True)
        client.initial()
        client.handle_continue(RFC_SERVER_FIRST)
    info = auth._salted_password.cache_info()
    assert (info.hits, info.misses) == (2, 1)


# -- SASLprep --------------------------------------------------------------------------------

@pytest.mark.parametrize("password,prepared", [
    ("pencil", b"pencil"),
    ("\x07ascii", b"\x07ascii"),  # ASCII is never touched, as PostgreSQL
    ("I\u00adX", b"IX"),  # RFC 4013 examples
    ("\u00aa", b"a"),
    ("\u2168", b"IX"),
    ("a\u00a0b", b"a b"),
    ("caf\u0065\u0301", "caf\u00e9".encode()),
    ("\u00ad", "\u00ad".encode()),  # empty after mapping: raw bytes
    ("a\u200eb", "a\u200eb".encode()),  # prohibited: raw bytes
    ("\u0627\u0031", "\u0627\u0031".encode()),  # bidi violation: raw bytes
    ("\u0627\u0031\u0628", "\u0627\u0031\u0628".encode()),
    ("\U000e0001x", "\U000e0001x".encode()),  # prohibited tag character
    ("\udcff\u00e9", b"\xff\xc3\xa9"),  # undecodable byte kept as it was
])
def test_saslprep(password, prepared):
    assert auth._saslprep(password) == prepared


# -- MD5 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("user,password,stored", [
    ("postgres", "postgres", "md53175bce1d3201d16594cebf9d7eb3f9d"),
    ("user", "pencil", "md5" + hashlib.md5(b"penciluser").hexdigest()),
    ("md5user", "pässwörd", "md5dcad7d1842f1b8cdb67e90d15fa93d3c"),  # from PostgreSQL 15
])
def test_md5_password_hash(user, password, stored):
    assert md5_password_hash(user, password) == stored


@pytest.mark.parametrize("user,secret,salt", [
    ("postgres", "postgres", b"\x01\x02\x03\x04"),
    ("postgres", "md53175bce1d3201d16594cebf9d7eb3f9d", b"\x01\x02\x03\x04"),
    ("alice", "pässwörd", b"\xff\x00\xff\x00"),
])
def test_md5_response(user, secret, salt):
    inner = secret[3:] if secret.startswith("md5") else hashlib.md5(
        (secret + user).encode()).hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    got = md5_response(user, secret, salt)
    assert got == expected and len(got) == 35


def test_md5_response_hash_equals_plaintext():
    salt = b"abcd"
    assert md5_response("postgres", "postgres", salt) == md5_response(
        "postgres", md5_password_hash("postgres", "postgres"), salt)


def test_md5_response_bad_salt():
    with pytest.raises(ProtocolViolation):
        md5_response("u", "p", b"abc")
