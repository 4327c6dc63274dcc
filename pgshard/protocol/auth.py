"""PostgreSQL password authentication without I/O: SCRAM-SHA-256 both ways, MD5 and verifiers."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

from pgshard.protocol.errors import InvalidPassword, ProtocolViolation

SCRAM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
# PostgreSQL accepts any positive int; a bound stops a hostile server from pinning a CPU.
MAX_ITERATIONS = 1_000_000
_SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
_NONCE_LEN = 18  # raw bytes, as PostgreSQL's SCRAM_RAW_NONCE_LEN
_KEY_LEN = 32


@dataclass(frozen=True)
class ScramSecret:
    """A parsed SCRAM-SHA-256 verifier, as stored in pg_authid.rolpassword."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        return (f"{SCRAM}${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")


# -- primitives ------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64 decode; raises binascii.Error on anything else."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _saslprep(password: str) -> bytes:
    """Password bytes as PostgreSQL's pg_saslprep() produces them, raw UTF-8 when it refuses.

    Mirrors src/common/saslprep.c: ASCII passes untouched; otherwise map (non-ASCII spaces to
    ' ', "commonly mapped to nothing" dropped), NFKC-normalise, and fall back to the raw bytes
    if the mapped string is empty, holds prohibited/unassigned code points (RFC 3454 tables via
    the stdlib `stringprep`) or breaks the bidi rules. Approximation: Python's NFKC uses its own
    Unicode version, PostgreSQL its own; they differ only for very recently assigned characters.
    """
    raw = password.encode("utf-8", "surrogateescape")
    if password.isascii():
        return raw
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return raw  # not valid UTF-8: PostgreSQL uses the bytes as they are
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in password if not stringprep.in_table_b1(c))
    if not mapped:
        return raw
    # PostgreSQL checks the mapped (not the normalised) characters; so do we.
    for c in mapped:
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
                or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
                or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
                or stringprep.in_table_c9(c) or stringprep.in_table_a1(c)):
            return raw
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return raw
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return raw
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


@functools.lru_cache(maxsize=256)
def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    # Cached: every server connect with the same credentials would otherwise redo PBKDF2.
    return hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)


def _secret_from_salted(salted: bytes, salt: bytes, iterations: int) -> ScramSecret:
    stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    return ScramSecret(iterations, salt, stored_key, _hmac(salted, b"Server Key"))


@functools.lru_cache(maxsize=256)
def _derived_secret(password: str) -> ScramSecret:
    # One random salt per plaintext password per process: clients reconnecting often pay
    # for PBKDF2 once, and the salt still differs from any other process's.
    salt = secrets.token_bytes(_SALT_LEN)
    return _secret_from_salted(_salted_password(password, salt, DEFAULT_ITERATIONS), salt,
                               DEFAULT_ITERATIONS)


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(_NONCE_LEN))


def _valid_nonce(nonce: str) -> bool:
    # RFC 5802: printable ASCII except ','.
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


# -- verifiers and MD5 -----------------------------------------------------------------------

def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = DEFAULT_ITERATIONS) -> str:
    """PostgreSQL's stored form: ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(_SALT_LEN)
    salted = _salted_password(password, salt, iterations)
    return str(_secret_from_salted(salted, salt, iterations))


def parse_scram_verifier(verifier: str) -> ScramSecret:
    """Parse a stored SCRAM-SHA-256 verifier; ValueError if it is not one."""
    try:
        mech, rest = verifier.split("$", 1)
        params, keys = rest.split("$", 1)
        iter_text, salt_text = params.split(":", 1)
        stored_text, server_text = keys.split(":", 1)
        if mech != SCRAM or not iter_text.isdigit():
            raise ValueError
        secret = ScramSecret(int(iter_text), _unb64(salt_text), _unb64(stored_text),
                             _unb64(server_text))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise ValueError("not a SCRAM-SHA-256 verifier") from None
    if (secret.iterations < 1 or not secret.salt or len(secret.stored_key) != _KEY_LEN
            or len(secret.server_key) != _KEY_LEN):
        raise ValueError("not a SCRAM-SHA-256 verifier")
    return secret


def md5_password_hash(user: str, password: str) -> str:
    """PostgreSQL's stored MD5 form: ``"md5" + md5(password + user)`` in hex."""
    return "md5" + hashlib.md5((password + user).encode("utf-8")).hexdigest()


def _is_md5_hash(secret: str) -> bool:
    return (len(secret) == 35 and secret.startswith("md5")
            and all(c in "0123456789abcdef" for c in secret[3:]))


def md5_response(user: str, password_or_md5hash: str, salt: bytes) -> bytes:
    """The PasswordMessage payload for AuthenticationMD5Password (no trailing NUL).

    An already-hashed ``md5...`` secret is used as is, as PostgreSQL treats it when stored.
    """
    if len(salt) != 4:
        raise ProtocolViolation("MD5 salt must be 4 bytes")
    secret = password_or_md5hash
    if not _is_md5_hash(secret):
        secret = md5_password_hash(user, secret)
    return b"md5" + hashlib.md5(secret[3:].encode("ascii") + salt).hexdigest().encode("ascii")


# -- SCRAM message parsing -------------------------------------------------------------------

def _malformed(detail: str) -> ProtocolViolation:
    return ProtocolViolation("malformed SCRAM message", detail=detail)


def _decode(data: bytes, what: str) -> str:
    if not data:
        raise _malformed(f"The {what} is empty.")
    # surrogateescape keeps non-UTF-8 user names byte-exact for the AuthMessage.
    return bytes(data).decode("utf-8", "surrogateescape")


def _attr(part: str, name: str, what: str) -> str:
    if len(part) < 2 or part[0] != name or part[1] != "=":
        raise _malformed(f"Expected attribute \"{name}\" in {what}.")
    return part[2:]


def _check_extensions(parts: list[str], what: str) -> None:
    for part in parts:
        if len(part) < 2 or not part[0].isascii() or not part[0].isalpha() or part[1] != "=":
            raise _malformed(f"Malformed attribute in {what}.")


def _parse_b64(text: str, what: str) -> bytes:
    try:
        return _unb64(text)
    except (binascii.Error, UnicodeEncodeError):
        raise _malformed(f"Malformed base64 {what}.") from None


# -- server side -----------------------------------------------------------------------------

class ScramServer:
    """Server side of SCRAM-SHA-256 (we authenticate clients).

    ``secret`` is a stored verifier or a plaintext password. Call ``handle_initial`` with the
    SASLInitialResponse, then ``handle_final`` with the SASLResponse; each returns the payload
    of the next Authentication message. ``nonce`` fixes the server nonce (tests only).
    """

    def __init__(self, secret: str, *, user: str | None = None, nonce: str | None = None):
        self.mechanisms: list[str] = [SCRAM]  # never SCRAM-SHA-256-PLUS: no channel binding
        if _is_md5_hash(secret):
            raise ValueError("an MD5 password hash cannot verify SCRAM-SHA-256")
        try:
            self._secret = parse_scram_verifier(secret)
        except ValueError:
            self._secret = _derived_secret(secret)
        if nonce is not None and not _valid_nonce(nonce):
            raise ValueError("invalid SCRAM nonce")
        self._user = user
        self._server_nonce = nonce
        self._gs2_header: str | None = None
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._done = False

    def handle_initial(self, mechanism: str, data: bytes) -> bytes:
        """Check client-first-message; return server-first-message (AuthenticationSASLContinue)."""
        if self._gs2_header is not None:
            raise ProtocolViolation("unexpected SASLInitialResponse")
        if mechanism != SCRAM:
            raise ProtocolViolation(
                "client selected an invalid SASL authentication mechanism")
        text = _decode(data, "client-first-message")
        flag, _, rest = text.partition(",")
        if flag.startswith("p="):
            raise _malformed("The client selected SCRAM-SHA-256 without channel binding, "
                             "but the SCRAM message includes channel binding data.")
        if flag not in ("n", "y"):
            raise _malformed("Unexpected channel-binding flag in client-first-message.")
        authzid, sep, bare = rest.partition(",")
        if authzid:
            raise ProtocolViolation(
                "client uses authorization identity, but it is not supported")
        if not sep:
            raise _malformed("Comma expected in client-first-message.")
        parts = bare.split(",")
        if parts[0].startswith("m="):
            raise ProtocolViolation("client requires an unsupported SCRAM extension")
        _attr(parts[0], "n", "client-first-message")  # user name: ignored, as PostgreSQL does
        if len(parts) < 2:
            raise _malformed("Expected attribute \"r\" in client-first-message.")
        client_nonce = _attr(parts[1], "r", "client-first-message")
        if not _valid_nonce(client_nonce):
            raise _malformed("Invalid nonce in client-first-message.")
        _check_extensions(parts[2:], "client-first-message")

        self._gs2_header = text[: len(text) - len(bare)]
        self._client_first_bare = bare
        self._nonce = client_nonce + (self._server_nonce or _new_nonce())
        s = self._secret
        self._server_first = f"r={self._nonce},s={_b64(s.salt)},i={s.iterations}"
        return self._server_first.encode("ascii")

    def handle_final(self, data: bytes) -> bytes:
        """Verify client-final-message; return server-final-message (AuthenticationSASLFinal)."""
        if self._gs2_header is None or self._done:
            raise ProtocolViolation("unexpected SASLResponse")
        self._done = True
        text = _decode(data, "client-final-message")
        parts = text.split(",")
        binding = _parse_b64(_attr(parts[0], "c", "client-final-message"), "channel binding")
        if binding != self._gs2_header.encode("utf-8", "surrogateescape"):
            raise _malformed("SCRAM channel binding check failed.")
        if len(parts) < 3:
            raise _malformed("Expected attribute \"p\" in client-final-message.")
        if _attr(parts[1], "r", "client-final-message") != self._nonce:
            raise _malformed("Nonce does not match.")
        _check_extensions(parts[2:-1], "client-final-message")
        proof = _parse_b64(_attr(parts[-1], "p", "client-final-message"), "proof")
        if len(proof) != _KEY_LEN:
            raise _malformed("Malformed proof in client-final-message.")

        without_proof = text[: len(text) - len(parts[-1]) - 1]
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        auth_bytes = auth_message.encode("utf-8", "surrogateescape")
        s = self._secret
        client_key = _xor(proof, _hmac(s.stored_key, auth_bytes))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), s.stored_key):
            who = f' for user "{self._user}"' if self._user is not None else ""
            raise InvalidPassword(f"password authentication failed{who}")
        return ("v=" + _b64(_hmac(s.server_key, auth_bytes))).encode("ascii")


# -- client side -----------------------------------------------------------------------------

def _saslname(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    """Client side of SCRAM-SHA-256 (we authenticate to PostgreSQL servers).

    ``nonce`` fixes the client nonce and ``send_user`` puts the user name in ``n=`` (both for
    tests; PostgreSQL ignores ``n=`` and libpq sends it empty).
    """

    mechanism = SCRAM

    def __init__(self, user: str, password: str, *, nonce: str | None = None,
                 send_user: bool = False):
        if nonce is not None and not _valid_nonce(nonce):
            raise ValueError("invalid SCRAM nonce")
        self.user = user
        self._password = password
        self._client_nonce = nonce or _new_nonce()
        self._client_first_bare = f"n={_saslname(user) if send_user else ''},r={self._client_nonce}"
        self._server_signature: bytes | None = None
        self._state = "initial"

    def initial(self) -> bytes:
        """client-first-message, the SASLInitialResponse payload."""
        if self._state != "initial":
            raise ProtocolViolation("SCRAM exchange already started")
        self._state = "continue"
        return ("n,," + self._client_first_bare).encode("utf-8")

    def handle_continue(self, data: bytes) -> bytes:
        """Take server-first-message (AuthenticationSASLContinue); return client-final-message."""
        if self._state != "continue":
            raise ProtocolViolation("unexpected AuthenticationSASLContinue")
        self._state = "final"
        text = _decode(data, "server-first-message")
        parts = text.split(",")
        if parts[0].startswith("m="):
            raise ProtocolViolation("server requires an unsupported SCRAM extension")
        if len(parts) < 3:
            raise _malformed("Expected attributes \"r\", \"s\", \"i\" in server-first-message.")
        nonce = _attr(parts[0], "r", "server-first-message")
        if (not _valid_nonce(nonce) or not nonce.startswith(self._client_nonce)
                or len(nonce) == len(self._client_nonce)):
            raise _malformed("Invalid SCRAM server nonce: it does not extend the client nonce.")
        salt = _parse_b64(_attr(parts[1], "s", "server-first-message"), "salt")
        if not salt:
            raise _malformed("Empty salt in server-first-message.")
        iter_text = _attr(parts[2], "i", "server-first-message")
        if not iter_text.isascii() or not iter_text.isdigit():
            raise _malformed("Malformed iteration count in server-first-message.")
        iterations = int(iter_text)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise _malformed(f"Iteration count {iterations} out of range.")
        _check_extensions(parts[3:], "server-first-message")

        salted = _salted_password(self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_bytes = ",".join((self._client_first_bare, text, without_proof)).encode(
            "utf-8", "surrogateescape")
        proof = _xor(client_key, _hmac(stored_key, auth_bytes))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_bytes)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def handle_final(self, data: bytes) -> None:
        """Verify server-final-message (AuthenticationSASLFinal): the server knows our secret."""
        if self._state != "final" or self._server_signature is None:
            raise ProtocolViolation("unexpected AuthenticationSASLFinal")
        self._state = "done"
        text = _decode(data, "server-final-message")
        first = text.split(",", 1)[0]
        if first.startswith("e="):
            error = first[2:]
            if error in ("invalid-proof", "unknown-user"):
                raise InvalidPassword(
                    f'password authentication failed for user "{self.user}"', detail=error)
            raise ProtocolViolation(f"SCRAM server error: {error}")
        signature = _parse_b64(_attr(first, "v", "server-final-message"), "server signature")
        if not hmac.compare_digest(signature, self._server_signature):
            raise InvalidPassword(f'SCRAM server signature mismatch for user "{self.user}"',
                                  detail="The server does not know this user's password.")
