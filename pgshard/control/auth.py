"""REST authentication and authorisation: salted scrypt password hashes, HS256 JWT bearer
tokens, and the role → permission table every route is checked against."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache

import jwt

from pgshard.control.errors import Unauthorized
from pgshard.store import CasFailed, MetadataStore

ROLES = ("admin", "operator", "viewer", "app")

# Permission → roles holding it. Routes name one permission each (routes.py).
PERMISSIONS: dict[str, frozenset[str]] = {
    "catalog:read": frozenset({"admin", "operator", "viewer"}),
    "catalog:write": frozenset({"admin", "operator"}),
    "audit:read": frozenset({"admin", "operator", "viewer"}),
    "users:admin": frozenset({"admin"}),
    "execute": frozenset({"admin", "app"}),
}

JWT_SECRET_KEY = "auth/jwt_secret"
ISSUER = "pgshard"

# scrypt cost: 16 MiB and ~50 ms per hash; verification runs on a worker thread.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def allowed(role: str, permission: str) -> bool:
    """Whether `role` holds `permission`."""
    return role in PERMISSIONS[permission]


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash` (base64) with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches a hash_password() string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, got)


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """Checked when a user does not exist, so a wrong name costs as much as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32,
                          maxmem=128 * r * n * 2)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's subject and the role the store gives them."""

    name: str
    role: str


class TokenIssuer:
    """Issues and verifies HS256 bearer tokens."""

    def __init__(self, secret: bytes, ttl: float):
        self._secret = secret
        self.ttl = ttl

    def issue(self, name: str, role: str) -> tuple[str, int]:
        """A token for `name` and its expiry (unix seconds)."""
        now = int(time.time())
        exp = now + max(1, int(self.ttl))
        claims = {"sub": name, "role": role, "iat": now, "exp": exp, "iss": ISSUER,
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._secret, algorithm="HS256"), exp

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; Unauthorized for bad, expired or foreign tokens."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=ISSUER,
                                options={"require": ["sub", "exp", "iat", "iss"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; log in again") from None
        except jwt.PyJWTError:
            raise Unauthorized("the token is not valid") from None
        role = claims.get("role")
        if not isinstance(claims["sub"], str) or role not in ROLES:
            raise Unauthorized("the token is not valid")
        return Principal(claims["sub"], role)


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer …` header; Unauthorized if there is none."""
    if not header:
        raise Unauthorized("authentication required: send Authorization: Bearer <token> "
                           "(POST /api/v1/auth/login)")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token


async def load_jwt_secret(store: MetadataStore, configured: str | None) -> bytes:
    """The configured secret, or the cluster's generated one (created on first use) so that
    every sidecar sharing the store accepts the same tokens."""
    if configured:
        return configured.encode()
    kv = await store.get(JWT_SECRET_KEY)
    if kv is None:
        try:
            await store.put(JWT_SECRET_KEY, secrets.token_hex(32).encode(), expect_revision=0)
        except CasFailed:
            pass  # another sidecar created it first
        kv = await store.get(JWT_SECRET_KEY)
    return kv.value
