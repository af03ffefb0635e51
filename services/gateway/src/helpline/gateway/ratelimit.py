"""Rate limits per API key, shared by every gateway replica.

GCRA (the generic cell rate algorithm, a token bucket kept as one number): a key allowed
`R` requests a minute has one request's worth of allowance back every `60/R` seconds and
may spend a whole minute's at once. Its state is the theoretical arrival time (`tat`) of
its next request, kept in the `rates` bucket under the key's id and changed only by
compare-and-swap, so replicas share one limit. A replica remembers the revision it last
wrote: while it is the only one serving a key, an allowed request costs one round trip
(the update); a refused one costs none. Requests of one key that arrive while its write is in
flight are settled together by the next write.

Keys with no limit (rate 0) are only noted as used, at most once a minute per replica.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError

from helpline.common.bus import Bus
from helpline.common.kv import kv_get
from helpline.common.kvscan import kv_entries
from helpline.common.subjects import Bucket
from helpline.gateway.keys import ApiKey

RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
#: The window a limit is stated over, and the burst a key may spend at once.
WINDOW_S = 60.0
#: Compare-and-swap attempts before a request is let through anyway.
ATTEMPTS = 8
#: How often an unlimited key's use is written down, per replica.
NOTE_USE_EVERY_S = 60.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the whole allowance is back.
    reset_s: float
    #: Seconds until the next request would be allowed (refused requests only).
    retry_after_s: float = 0.0

    def headers(self) -> dict[str, str]:
        """The RateLimit-* headers (IETF draft, delta seconds), Retry-After when refused."""
        if self.limit == 0:
            return {}
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


UNLIMITED = Verdict(allowed=True, limit=0, remaining=0, reset_s=0.0)


class RateLimiter:
    def __init__(self, bus: Bus, default_per_minute: int) -> None:
        self._bus = bus
        self.default_per_minute = default_per_minute
        #: Per key id: the state this replica last read or wrote, and its revision.
        self._seen: dict[str, tuple[float, int]] = {}
        self._noted: dict[str, float] = {}
        #: Per key id: requests waiting for the write in flight to finish.
        self._waiting: dict[str, list[asyncio.Future[Verdict]]] = {}
        self._settling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def check(self, key: ApiKey) -> Verdict:
        """Spend one request of `key`'s allowance, or say when there is one again.

        Requests of one key that arrive while its state is being written wait and are
        settled together by the next write (one compare-and-swap for all of them), rather
        than each racing the others for the same revision.
        """
        rate = key.rate(self.default_per_minute)
        if rate <= 0:
            await self._note_use(key.id)
            return UNLIMITED
        waiter: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key.id, []).append(waiter)
        if key.id not in self._settling:
            self._settling.add(key.id)
            task = asyncio.create_task(self._settle(key.id, rate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiter

    async def _settle(self, key_id: str, rate: int) -> None:
        """Settle the key's waiting requests, a write per group, until none wait."""
        try:
            while waiting := self._waiting.pop(key_id, None):
                try:
                    verdicts = await self._spend(key_id, rate, len(waiting))
                except BaseException as exc:
                    for waiter in waiting:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for waiter, verdict in zip(waiting, verdicts, strict=True):
                    if not waiter.done():
                        waiter.set_result(verdict)
        finally:
            self._settling.discard(key_id)

    async def _spend(self, key_id: str, rate: int, count: int) -> list[Verdict]:
        """`count` requests in turn against the key's allowance, written once."""
        interval = WINDOW_S / rate
        kv = await self._bus.buckets.get(Bucket.RATES)
        seen = self._seen.get(key_id)
        for _ in range(ATTEMPTS):
            if seen is None:
                stored = await kv_get(kv, key_id)
                seen = (json.loads(stored[0])["tat"], stored[1]) if stored else (0.0, 0)
            tat, revision = seen
            now = time.time()
            verdicts = []
            for _ in range(count):
                new_tat = max(tat, now) + interval
                if new_tat - now > WINDOW_S:
                    verdicts.append(
                        Verdict(
                            allowed=False,
                            limit=rate,
                            remaining=0,
                            reset_s=max(tat - now, 0.0),
                            retry_after_s=new_tat - WINDOW_S - now,
                        )
                    )
                    continue
                tat = new_tat
                verdicts.append(
                    Verdict(
                        allowed=True,
                        limit=rate,
                        remaining=int((now + WINDOW_S - tat) / interval),
                        reset_s=tat - now,
                    )
                )
            if tat == seen[0]:
                return verdicts  # all refused: nothing to write
            value = json.dumps({"tat": tat, "used": now}).encode()
            try:
                written = (
                    await kv.update(key_id, value, last=revision)
                    if revision
                    else await kv.create(key_id, value)
                )
            except KeyWrongLastSequenceError:
                seen = None  # another replica spent some: read again
                continue
            self._seen[key_id] = (tat, written)
            return verdicts
        self._seen.pop(key_id, None)
        # Contention this heavy is many replicas serving one key at once: let them through
        # rather than fail requests the limit may well allow.
        return [Verdict(allowed=True, limit=rate, remaining=0, reset_s=WINDOW_S)] * count

    async def _note_use(self, key_id: str) -> None:
        now = time.time()
        if now - self._noted.get(key_id, 0.0) < NOTE_USE_EVERY_S:
            return
        self._noted[key_id] = now
        kv = await self._bus.buckets.get(Bucket.RATES)
        await kv.put(key_id, json.dumps({"tat": 0.0, "used": now}).encode())
        self._seen.pop(key_id, None)

    async def forget(self, key_id: str) -> None:
        """Drop a revoked key's state."""
        await (await self._bus.buckets.get(Bucket.RATES)).delete(key_id)
        self._seen.pop(key_id, None)

    async def last_used(self) -> dict[str, float]:
        """Per key id: when it was last used (unlimited keys: to the minute)."""
        kv = await self._bus.buckets.get(Bucket.RATES)
        used: dict[str, float] = {}
        async for entry in kv_entries(kv):
            if entry.value:
                try:
                    used[entry.key] = float(json.loads(entry.value)["used"])
                except (ValueError, KeyError, TypeError):
                    continue
        return used
