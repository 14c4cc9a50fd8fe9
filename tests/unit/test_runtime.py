"""The collector pause bulk imports take: counted across overlapping imports, and it puts back
the collector as it found it."""

import asyncio
import gc

from service.runtime import collector_paused


def test_the_collector_runs_again_only_when_the_last_overlapping_pause_ends():
    assert gc.isenabled()
    outer = collector_paused()
    inner = collector_paused()
    outer.__enter__()
    inner.__enter__()
    assert not gc.isenabled()
    outer.__exit__(None, None, None)  # the first to start ends first: the other still runs
    assert not gc.isenabled()
    inner.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_failing_import_still_ends_its_pause():
    try:
        with collector_paused():
            raise ValueError("bad chunk")
    except ValueError:
        pass
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_concurrent_imports_share_one_pause():
    seen = []

    async def bulk(delay: float) -> None:
        with collector_paused():
            await asyncio.sleep(delay)
            seen.append(gc.isenabled())

    await asyncio.gather(bulk(0.01), bulk(0.03))
    assert seen == [False, False] and gc.isenabled()
