"""Leases: one replica at a time does a replicated job (the maintenance schedule).

A lease is one key of the `leases` bucket holding its holder and when it runs out. A
replica takes it when it is absent or ran out, and renews it while it holds it, each write
a compare-and-swap on the revision it read: of two replicas that read the same entry only
one write lands. A holder that dies stops renewing and anyone may take the lease once it
runs out (`ttl_s` later at most). A holder counts itself the holder only until the expiry
it wrote, so two never both act, as long as their clocks agree within the margin left
between renewals (a third of the TTL).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js.errors import KeyWrongLastSequenceError

from helpline.common.kv import kv_create, kv_get
from helpline.common.subjects import Bucket

if TYPE_CHECKING:
    from helpline.common.kv import Buckets


@dataclass(frozen=True)
class LeaseState:
    holder: str
    expires_at: float


class Lease:
    """The lease named `name` as seen by `holder`."""

    def __init__(self, buckets: Buckets, name: str, holder: str, ttl_s: float) -> None:
        self._buckets = buckets
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self._held_until = 0.0

    def held(self, now: float | None = None) -> bool:
        """Whether this replica holds the lease now (by the expiry it last wrote)."""
        return (time.time() if now is None else now) < self._held_until

    async def current(self) -> LeaseState | None:
        """Who holds the lease and until when (None: nobody ever took it)."""
        entry = await kv_get(await self._buckets.get(Bucket.LEASES), self.name)
        return _state(entry[0]) if entry else None

    async def hold(self) -> bool:
        """Take the lease if it is free or ran out, renew it if ours; whether we hold it."""
        kv = await self._buckets.get(Bucket.LEASES)
        now = time.time()
        entry = await kv_get(kv, self.name)
        state = _state(entry[0]) if entry else None
        if state is not None and state.holder != self.holder and state.expires_at > now:
            self._held_until = 0.0
            return False
        expires = now + self.ttl_s
        value = json.dumps({"holder": self.holder, "expires_at": expires}).encode()
        try:
            if entry is None:
                await kv_create(kv, self.name, value)
            else:
                await kv.update(self.name, value, last=entry[1])
        except KeyWrongLastSequenceError:  # another replica wrote first
            self._held_until = 0.0
            return False
        self._held_until = expires
        return True

    async def release(self) -> None:
        """Give the lease up at once (a clean stop), if this replica still holds it."""
        if not self.held():
            return
        self._held_until = 0.0
        kv = await self._buckets.get(Bucket.LEASES)
        entry = await kv_get(kv, self.name)
        state = _state(entry[0]) if entry else None
        if entry is None or state is None or state.holder != self.holder:
            return
        value = json.dumps({"holder": self.holder, "expires_at": 0.0}).encode()
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.update(self.name, value, last=entry[1])


def _state(raw: bytes) -> LeaseState | None:
    try:
        data = json.loads(raw)
        return LeaseState(holder=str(data["holder"]), expires_at=float(data["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return None
