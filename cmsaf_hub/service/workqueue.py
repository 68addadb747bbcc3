"""A work queue of cluster ids: each id is processed by one task at a time, failures back off.

Like a Kubernetes controller's rate-limited queue: putting an id that is already queued is a
no-op; putting one that is being processed marks it dirty so it runs again right after.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class WorkQueue:
    def __init__(self, *, backoff_base: float = 0.5, backoff_max: float = 60.0):
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: Counter[str] = Counter()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def put(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def put_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds (an earlier pending timer for it wins)."""
        if key not in self._timers:
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.put(key)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def processing(self, key: str) -> bool:
        return key in self._processing

    def backoff(self, key: str) -> float:
        """Delay before retrying ``key`` after its latest failure."""
        return min(self.backoff_max, self.backoff_base * 2 ** (self._failures[key] - 1))

    def failures(self, key: str) -> int:
        return self._failures[key]

    def done(self, key: str, *, failed: bool = False) -> None:
        """Finish processing ``key``; a failed key is retried with exponential backoff."""
        self._processing.discard(key)
        if failed:
            self._failures[key] += 1
            self._dirty.discard(key)
            self.put_after(key, self.backoff(key))
            return
        self._failures.pop(key, None)
        if key in self._dirty:
            self._dirty.discard(key)
            self.put(key)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
