"""The coalescer behind group commit and the refresh path's bookkeeping statements (pure asyncio, no I/O)."""

import asyncio

import pytest

from events.batching import Coalescer


class Recorder:
    def __init__(self, fail: bool = False):
        self.batches: list[list] = []
        self.fail = fail
        self.release = asyncio.Event()

    async def send(self, items: list) -> dict:
        self.batches.append(items)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("refused")
        return {key: f"done {key}" for key, _ in items}


async def test_a_lone_call_goes_at_once_and_later_ones_share_the_next_batch():
    sent = Recorder()
    batcher = Coalescer(sent.send, max_in_flight=1)
    first = asyncio.create_task(batcher.submit("a", ("a", 1)))
    await asyncio.sleep(0)
    later = [asyncio.create_task(batcher.submit(k, (k, 1))) for k in ("b", "c", "d")]
    await asyncio.sleep(0)
    sent.release.set()
    assert await first == "done a" and [await t for t in later] == ["done b", "done c", "done d"]
    assert [[k for k, _ in batch] for batch in sent.batches] == [["a"], ["b", "c", "d"]]


async def test_a_second_item_for_a_key_waits_for_a_later_batch():
    sent = Recorder()
    sent.release.set()
    batcher = Coalescer(sent.send, max_in_flight=1)
    results = await asyncio.gather(*(batcher.submit(k, (k, i)) for i, k in enumerate(("x", "x", "y"))))
    assert results == ["done x", "done x", "done y"]
    assert all(len({k for k, _ in batch}) == len(batch) for batch in sent.batches)
    assert sum(len(batch) for batch in sent.batches) == 3 and len(sent.batches) >= 2


async def test_every_caller_of_a_failed_batch_gets_its_error_and_the_batcher_goes_on():
    sent = Recorder(fail=True)
    sent.release.set()
    batcher = Coalescer(sent.send)
    results = await asyncio.gather(*(batcher.submit(k, (k, 1)) for k in "abc"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    sent.fail = False
    assert await batcher.submit("d", ("d", 1)) == "done d"


async def test_a_key_missing_from_the_results_is_none():
    async def send(items):
        return {}

    assert await Coalescer(send).submit("a", ("a", 1)) is None


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_at_most_max_in_flight_batches_are_sent_at_once(in_flight):
    running = peak = 0

    async def send(items):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return {key: key for key, _ in items}

    batcher = Coalescer(send, max_in_flight=in_flight)
    assert await asyncio.gather(*(batcher.submit(i, (i, 0)) for i in range(50))) == list(range(50))
    assert peak <= in_flight


@pytest.mark.parametrize("min_share, batches", [(1, [4, 4]), (8, [8]), (3, [4, 4])])
async def test_a_queue_is_shared_across_idle_drainers_in_parts_of_at_least_min_share(min_share, batches):
    sent = Recorder()
    batcher = Coalescer(sent.send, max_in_flight=2, min_share=min_share)
    calls = [asyncio.create_task(batcher.submit(k, (k, 1))) for k in "abcdefgh"]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    sent.release.set()
    assert [await call for call in calls] == [f"done {k}" for k in "abcdefgh"]
    assert [len(batch) for batch in sent.batches] == batches
