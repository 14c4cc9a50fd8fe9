"""Coalescing small writes into one statement (group commit for the refresh path's bookkeeping).

A lone call is sent at once; calls arriving while batches are in flight wait for the next one, so
batching costs no latency at low load and saves statements, commits and round trips at high load.
"""

import asyncio
from typing import Any, Awaitable, Callable, Hashable


class Batcher:
    """`send(items)` gets a list of distinct-keyed items and returns {key: result}; each caller of
    `submit(key, item)` gets its key's result (None when absent). A second item for a key that is
    waiting already goes in a later batch."""

    def __init__(self, send: Callable[[list[Any]], Awaitable[dict[Hashable, Any]]], *,
                 max_in_flight: int = 2, max_batch: int = 256):
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[Hashable, Any, asyncio.Future]] = []
        self._in_flight = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        done = asyncio.get_running_loop().create_future()
        self._queue.append((key, item, done))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            asyncio.create_task(self._drain())
        return await done

    def _take(self) -> list[tuple[Hashable, Any, asyncio.Future]]:
        batch, keys, rest = [], set(), []
        for entry in self._queue:
            if len(batch) < self._max_batch and entry[0] not in keys:
                keys.add(entry[0])
                batch.append(entry)
            else:
                rest.append(entry)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                try:
                    results = await self._send([item for _, item, _ in batch])
                except asyncio.CancelledError:
                    for _, _, done in batch:
                        done.cancel()
                    raise
                except Exception as error:  # each caller meets the batch's error
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                    continue
                for key, _, done in batch:
                    if not done.done():
                        done.set_result(results.get(key))
        finally:
            self._in_flight -= 1
