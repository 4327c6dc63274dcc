"""REST API users in the store (`users/<name>`): role and salted password hash, never the
password itself."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from pgshard.control.auth import ROLES, dummy_hash, hash_password, verify_password
from pgshard.control.errors import Conflict, NotFound
from pgshard.store import CasFailed, MetadataStore

PREFIX = "users"


@dataclass(frozen=True, slots=True)
class ApiUser:
    name: str
    role: str
    password_hash: str
    created_at: float

    def public(self) -> dict:
        """The user as the API shows it: no hash."""
        return {"name": self.name, "role": self.role, "created_at": _iso(self.created_at)}

    def to_bytes(self) -> bytes:
        return json.dumps({"name": self.name, "role": self.role,
                           "password_hash": self.password_hash,
                           "created_at": self.created_at}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ApiUser:
        d = json.loads(raw)
        return cls(d["name"], d["role"], d["password_hash"], d.get("created_at", 0.0))


class UserDirectory:
    """Create, list, delete and authenticate API users."""

    def __init__(self, store: MetadataStore):
        self.store = store

    async def get(self, name: str) -> ApiUser | None:
        kv = await self.store.get(f"{PREFIX}/{name}")
        return ApiUser.from_bytes(kv.value) if kv is not None else None

    async def list(self) -> list[ApiUser]:
        return [ApiUser.from_bytes(kv.value) for kv in await self.store.list(PREFIX)]

    async def create(self, name: str, password: str, role: str) -> ApiUser:
        """A new user; Conflict if the name is taken."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        user = ApiUser(name, role, await asyncio.to_thread(hash_password, password), time.time())
        try:
            await self.store.put(f"{PREFIX}/{name}", user.to_bytes(), expect_revision=0)
        except CasFailed:
            raise Conflict(f'user "{name}" already exists') from None
        return user

    async def delete(self, name: str) -> None:
        """Remove a user; NotFound if unknown, Conflict if it is the last admin."""
        kv = await self.store.get(f"{PREFIX}/{name}")
        if kv is None:
            raise NotFound(f'user "{name}" does not exist')
        user = ApiUser.from_bytes(kv.value)
        if user.role == "admin":
            admins = [u for u in await self.list() if u.role == "admin"]
            if len(admins) <= 1:
                raise Conflict(f'"{name}" is the last admin; create another admin first')
        try:
            await self.store.delete(f"{PREFIX}/{name}", expect_revision=kv.revision)
        except CasFailed:
            raise Conflict(f'user "{name}" changed concurrently; retry') from None

    async def authenticate(self, name: str, password: str) -> ApiUser | None:
        """The user if the password matches, else None (same cost either way)."""
        user = await self.get(name) if _plausible(name) else None
        encoded = user.password_hash if user is not None else dummy_hash()
        ok = await asyncio.to_thread(verify_password, password, encoded)
        return user if ok and user is not None else None

    async def ensure_admin(self, name: str, password: str) -> bool:
        """Make `name` an admin with `password` (the bootstrap admin); True if it changed."""
        for _ in range(5):
            kv = await self.store.get(f"{PREFIX}/{name}")
            if kv is not None:
                user = ApiUser.from_bytes(kv.value)
                if user.role == "admin" and await asyncio.to_thread(
                        verify_password, password, user.password_hash):
                    return False
            created = ApiUser.from_bytes(kv.value).created_at if kv is not None else time.time()
            user = ApiUser(name, "admin", await asyncio.to_thread(hash_password, password),
                           created)
            try:
                await self.store.put(f"{PREFIX}/{name}", user.to_bytes(),
                                     expect_revision=kv.revision if kv is not None else 0)
                return True
            except CasFailed:
                continue
        raise Conflict(f"could not set up the bootstrap admin {name!r}: concurrent changes")


def _plausible(name: str) -> bool:
    # Store keys are relative paths; anything else cannot be a user and must not reach it.
    return bool(name) and "/" not in name and len(name) <= 128


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
