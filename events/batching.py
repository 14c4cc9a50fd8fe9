"""Coalescing: concurrent callers' small writes or reads sent as one statement (group commit).

A lone request is sent at once; requests arriving while batches are in flight wait for the next
one, so batching costs no latency at low load and saves round trips, statements and commits at
high load. Each caller still gets its own answer.
"""

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable, Sequence


@dataclass
class _Pending:
    key: Hashable | None
    payload: Any
    done: asyncio.Future


class Coalescer:
    """Sends queued requests in batches, at most `max_in_flight` at a time.

    `send(payloads)` returns a mapping from each request's key to its answer; a key it leaves out
    answers None, which tells the caller to do that request alone (and meet its own error there).
    Requests with the same key never share a batch (a second write to a stream needs the first's
    outcome); requests submitted with key None share freely and are answered by their position
    (`send` then returns a list). Errors in `alone_on` make every request of the batch answer None.
    """

    def __init__(
        self,
        send: Callable[[list[Any]], Awaitable[dict[Hashable, Any] | Sequence[Any]]],
        *,
        alone_on: tuple[type[BaseException], ...] = (),
        max_in_flight: int = 2,
        max_batch: int = 256,
        min_share: int = 1,
    ):
        self._send_batch = send
        self._alone_on = alone_on
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._min_share = min_share
        self._queue: list[_Pending] = []
        self._in_flight = 0
        self._sending = 0
        self._drainers: set[asyncio.Task] = set()  # held so that a running drainer is never collected

    async def submit(self, key: Hashable | None, payload: Any) -> Any:
        item = _Pending(key, payload, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            drainer = asyncio.create_task(self._drain())
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)
        return await item.done

    def _take(self) -> list[_Pending]:
        """This drainer's share of the queue, one item per key. Shares are even across idle
        drainers, so the batches run on several connections at once instead of one long batch on
        one, but none smaller than `min_share` (where each statement has a fixed cost that small
        batches would pay more often than running them at once saves)."""
        idle = max(1, self._in_flight - self._sending)
        share = min(self._max_batch, max(-(-len(self._queue) // idle), self._min_share))
        batch, keys, rest = [], set(), []
        for item in self._queue:
            if len(batch) < share and (item.key is None or item.key not in keys):
                if item.key is not None:
                    keys.add(item.key)
                batch.append(item)
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                self._sending += 1
                try:
                    await self._send(batch)
                finally:
                    self._sending -= 1
        finally:
            self._in_flight -= 1

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            answers = await self._send_batch([item.payload for item in batch])
        except self._alone_on:
            answers = {}
        except asyncio.CancelledError:
            for item in batch:
                item.done.cancel()
            raise
        except Exception as exc:  # each caller meets the batch's error; the queue goes on draining
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        for index, item in enumerate(batch):
            if not item.done.done():
                if isinstance(answers, dict):
                    item.done.set_result(answers.get(item.key))
                else:
                    item.done.set_result(answers[index] if index < len(answers) else None)
