"""API keys: who may call the gateway, with which scopes, for which brands.

A key is `hl_<16 hex digits>_<43 URL-safe characters>`: the hex digits name its record
(`key_<hex>`), the rest are 256 random bits. It is shown once, when it is made; only its
SHA-256 is stored, in the `keys` bucket under the key's id, so a key at rest, in a log line
or in a record is never the key itself. Every gateway replica follows the bucket in memory
(a watch): a lookup is a dictionary read, and a revoked key is refused by every replica as
soon as the watch delivers the deletion (milliseconds). A key a replica does not know yet
(made a moment ago on another) is read by its id before it is refused.

`HELPLINE_ADMIN_KEY` is the bootstrap key: stored under the id `admin`, with every scope, no
brand limit and no rate limit. It is changed (and the old one revoked) only by starting the
gateway with another value.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from helpline.common.bus import Bus
from helpline.common.kv import kv_get
from helpline.common.kvscan import kv_entries
from helpline.common.messages import utcnow
from helpline.common.subjects import Bucket

log = logging.getLogger(__name__)

#: The bootstrap key's id.
ADMIN_ID = "admin"
#: The shortest HELPLINE_ADMIN_KEY accepted: a key is a password nobody types.
MIN_ADMIN_KEY_CHARS = 16
KEY_PREFIX = "hl_"


class Scope(StrEnum):
    """What a key may do. `admin` includes the other two."""

    QUERY = "query"  # ask, stream answers
    SUBMIT = "submit"  # crawl, scrape, batch, embed; read and cancel tasks
    ADMIN = "admin"  # keys, cache, dead letters, maintenance, the system views


class ApiKey(BaseModel):
    """A key as stored: everything but the key itself, which only its hash stands for."""

    id: str
    name: str
    scopes: list[Scope]
    #: The brands it may use; None: every brand.
    brands: list[str] | None = None
    #: Requests a minute; None: the gateway's default; 0: not limited.
    rate_per_minute: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    hash: str
    #: Made from HELPLINE_ADMIN_KEY (not revocable through the API).
    bootstrap: bool = False

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def allows_brand(self, brand: str | None) -> bool:
        """Whether it may use `brand` (None, "every brand", only when it is not limited)."""
        return self.brands is None or (brand is not None and brand in self.brands)

    def brand_set(self) -> set[str] | None:
        return set(self.brands) if self.brands is not None else None

    def rate(self, default: int) -> int:
        """Its requests a minute; 0: not limited."""
        return default if self.rate_per_minute is None else self.rate_per_minute


def digest(key: str) -> str:
    """What is stored for a key: its SHA-256 (the key is 256 random bits: no salt needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(id_hex: str | None = None) -> str:
    return f"{KEY_PREFIX}{id_hex or secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The record id a key names (`hl_<hex>_...` -> `key_<hex>`), or None."""
    if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 17:
        return None
    id_hex = key[len(KEY_PREFIX) : len(KEY_PREFIX) + 16]
    if key[len(KEY_PREFIX) + 16] != "_" or any(c not in "0123456789abcdef" for c in id_hex):
        return None
    return "key_" + id_hex


class KeyRing:
    """The keys one replica knows, by hash and by id."""

    def __init__(self) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}

    def put(self, key: ApiKey) -> None:
        self.remove(key.id)
        self._by_id[key.id] = key
        self._by_hash[key.hash] = key

    def remove(self, key_id: str) -> None:
        old = self._by_id.pop(key_id, None)
        if old is not None and self._by_hash.get(old.hash) is old:
            del self._by_hash[old.hash]

    def find(self, key: str) -> ApiKey | None:
        """The stored key this presented key is, or None (unknown or revoked)."""
        return self._by_hash.get(digest(key))

    async def lookup(self, key: str) -> ApiKey | None:
        return self.find(key)

    def get(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    def all(self) -> list[ApiKey]:
        return sorted(self._by_id.values(), key=lambda k: (k.created_at, k.id))


class KeyStore(KeyRing):
    """The `keys` bucket, followed in memory; making and revoking keys."""

    def __init__(self, bus: Bus) -> None:
        super().__init__()
        self._bus = bus
        self._watch: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        """Keep the ring current; returns once every key stored so far is known."""
        kv = await self._bus.buckets.get(Bucket.KEYS)
        watcher = await kv.watchall()

        async def follow() -> None:
            async for entry in watcher:
                if entry is None or not entry.key:
                    continue
                if entry.operation is None and entry.value:
                    self._load(entry.key, entry.value)
                else:  # deleted or purged: revoked
                    self.remove(entry.key)

        self._watch = asyncio.create_task(follow())
        async for entry in kv_entries(kv):
            if entry.value:
                self._load(entry.key, entry.value)

    def _load(self, key_id: str, raw: bytes) -> None:
        try:
            self.put(ApiKey.model_validate_json(raw))
        except ValueError:
            log.warning("key %s in the keys bucket is unreadable; ignored", key_id)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def create(
        self,
        name: str,
        scopes: list[Scope],
        brands: list[str] | None = None,
        rate_per_minute: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key: its record and the key itself (returned this once, never stored)."""
        id_hex = secrets.token_hex(8)
        secret = new_key(id_hex)
        key = ApiKey(
            id="key_" + id_hex,
            name=name,
            scopes=sorted(set(scopes)),
            brands=sorted(set(brands)) if brands is not None else None,
            rate_per_minute=rate_per_minute,
            hash=digest(secret),
        )
        await self._store(key)
        return key, secret

    async def lookup(self, key: str) -> ApiKey | None:
        """`find`, and for a key this replica does not know yet, its record read by id."""
        found = self.find(key)
        if found is not None:
            return found
        key_id = key_id_of(key)
        if key_id is None:
            return None
        stored = await kv_get(await self._bus.buckets.get(Bucket.KEYS), key_id)
        if stored is None:
            return None
        record = ApiKey.model_validate_json(stored[0])
        if not hmac.compare_digest(record.hash, digest(key)):
            return None
        self.put(record)
        return record

    async def revoke(self, key_id: str) -> bool:
        """Delete the key for every replica; False when there is none with that id."""
        kv = await self._bus.buckets.get(Bucket.KEYS)
        if await kv_get(kv, key_id) is None:
            return False
        await kv.delete(key_id)
        self.remove(key_id)
        return True

    async def bootstrap(self, secret: str) -> None:
        """Store HELPLINE_ADMIN_KEY as the `admin` key (replacing another value's)."""
        if len(secret) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"HELPLINE_ADMIN_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters"
            )
        hashed = digest(secret)
        current = self.get(ADMIN_ID)
        if current is not None and current.hash == hashed:
            return
        await self._store(
            ApiKey(
                id=ADMIN_ID,
                name="admin (HELPLINE_ADMIN_KEY)",
                scopes=[Scope.ADMIN, Scope.QUERY, Scope.SUBMIT],
                rate_per_minute=0,
                hash=hashed,
                bootstrap=True,
            )
        )

    async def _store(self, key: ApiKey) -> None:
        kv = await self._bus.buckets.get(Bucket.KEYS)
        await kv.put(key.id, key.model_dump_json().encode())
        self.put(key)  # usable on this replica at once, before the watch brings it back
