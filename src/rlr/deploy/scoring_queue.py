"""One scoring at a time, on one worker thread, with a bounded number of requests waiting.

Why: torch already spreads one forward pass over every core, so two passes at once only fight
over the same cores (and double the memory). Requests wait their turn here instead; when
`capacity` are already waiting or running, a new one is refused at once (the API answers 503)
rather than queueing without bound. A request whose time runs out while still waiting is
dropped from the queue, so it costs nothing.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """`capacity` requests are already waiting or running."""


class ScoringQueue:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlr-score")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Requests waiting or running now."""
        return self._pending

    async def run(self, job: Callable[[], T], timeout: float) -> T:
        """`job()`'s result once its turn came and it ran; QueueFull, or TimeoutError after `timeout` s."""
        with self._lock:
            if self._pending >= self.capacity:
                raise QueueFull
            self._pending += 1
        try:
            future = self._executor.submit(job)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)  # cancels a job still waiting

    def _release(self, _: Future | None) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        """Drop waiting jobs and let the running one finish."""
        self._executor.shutdown(wait=False, cancel_futures=True)
